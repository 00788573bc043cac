"""The gateway's request path once a body is validated: route, forward, relay.

A replica that cannot be connected to has seen nothing of the request, so the request
goes to the router's next choice (up to `max_attempts`); any later failure is the
client's to see, since the engine may have started on it.
"""

import logging
import time
import uuid
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import Response

from app.errors import EngineUnreachable
from app.pools import PoolRegistry
from app.proxy import Proxy
from app.routing import choose
from app.settings import GatewaySettings

__all__ = ["Gateway", "request_id"]

log = logging.getLogger("app.route")

_MAX_REQUEST_ID = 128


@dataclass(slots=True)
class Gateway:
    settings: GatewaySettings
    registry: PoolRegistry
    proxy: Proxy

    async def dispatch(self, request: Request, path: str, model: str, key: str, body: bytes) -> Response:
        rid = request_id(request)
        tried: list[str] = []
        while True:
            decision = choose(self.registry, model, key, time.monotonic(), exclude=tried)
            replica = decision.node
            log.info("%s %s -> %s", rid, path, decision)  # explained only when logged
            headers = {"x-request-id": rid, "x-route-region": decision.region, "x-route-replica": replica.id}
            try:
                return await self.proxy.forward(request, replica, path, body, headers)
            except EngineUnreachable:
                tried.append(replica.name)
                if len(tried) >= self.settings.max_attempts:
                    raise
                log.warning("%s: %s unreachable, trying another replica", rid, replica.id)


def request_id(request: Request) -> str:
    """The client's `x-request-id` when it sent a sane one, else a new one."""
    given = request.headers.get("x-request-id", "")
    if 0 < len(given) <= _MAX_REQUEST_ID and given.isprintable():
        return given
    return uuid.uuid4().hex
