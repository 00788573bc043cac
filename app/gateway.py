"""The gateway's request path once a body is validated: choose a replica, forward, relay."""

import uuid
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import Response

from app.pools import PoolRegistry
from app.proxy import Proxy
from app.routing import choose_replica
from app.settings import GatewaySettings

__all__ = ["Gateway"]

_MAX_REQUEST_ID = 128


@dataclass(slots=True)
class Gateway:
    settings: GatewaySettings
    registry: PoolRegistry
    proxy: Proxy

    async def dispatch(self, request: Request, path: str, model: str, body: bytes) -> Response:
        replica = choose_replica(self.registry, model, self.settings.region)
        return await self.proxy.forward(request, replica, path, body, {"x-request-id": request_id(request)})


def request_id(request: Request) -> str:
    """The client's `x-request-id` when it sent a sane one, else a new one."""
    given = request.headers.get("x-request-id", "")
    if 0 < len(given) <= _MAX_REQUEST_ID and given.isprintable():
        return given
    return uuid.uuid4().hex
