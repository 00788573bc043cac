"""The admin API: pools and their replicas, managed at run time. Tokens with scope `admin`;
with authentication disabled (a loopback-only gateway), clients on this host only."""

import ipaddress
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, HttpUrl

from app.api.body import parse_body, read_json_body
from app.api.deps import GatewayDep, guard_of
from app.errors import Conflict, PermissionDenied, UsageUnavailable
from app.observability import usage as usage_counts
from app.observability.usage import RETENTION_MINUTES

__all__ = ["router"]


async def _admin(request: Request) -> None:
    if await guard_of(request).check(request.headers, "admin") is not None:
        return
    host = request.client.host if request.client else ""
    try:
        local = ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = False
    if not local:
        raise PermissionDenied("The admin API answers only on loopback.")


async def _one_process(gateway: GatewayDep) -> None:
    """Pools live in each worker's memory: a change here would reach one worker only."""
    if gateway.settings.workers > 1:
        raise Conflict(
            f"This gateway runs {gateway.settings.workers} workers; change its pools in the settings and restart it."
        )


router = APIRouter(prefix="/admin", dependencies=[Depends(_admin)])
changes = [Depends(_one_process)]


class AddReplica(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: HttpUrl


@router.get("/pools")
async def list_pools(gateway: GatewayDep) -> dict[str, Any]:
    return {"region": gateway.settings.region, "pools": gateway.registry.describe(time.monotonic())}


@router.get("/usage")
async def usage(gateway: GatewayDep, minutes: Annotated[int, Query(ge=1, le=RETENTION_MINUTES)] = 60) -> dict[str, Any]:
    """Per tenant and minute over the last `minutes`: requests, tokens, errors, sheds; and the
    SLOs' burn rates over 5 minutes, an hour, six hours and a day."""
    try:
        data = await gateway.usage.report(minutes)
    except usage_counts.UsageUnavailable as exc:
        raise UsageUnavailable(f"The region's usage counts cannot be read: {exc}") from None
    return {"region": gateway.settings.region, **data}


@router.get("/pools/{pool}")
async def get_pool(pool: str, gateway: GatewayDep) -> dict[str, Any]:
    return gateway.registry.describe_pool(gateway.nodes.pool(pool), time.monotonic())


@router.post("/pools/{pool}/replicas", status_code=201, dependencies=changes)
async def add_replica(pool: str, request: Request, gateway: GatewayDep) -> dict[str, Any]:
    nodes = gateway.nodes
    body = parse_body(await read_json_body(request, gateway.settings.max_body_bytes), AddReplica)
    return nodes.describe(await nodes.add(pool, str(body.url)))


@router.delete("/pools/{pool}/replicas/{replica_id}", dependencies=changes)
async def remove_replica(pool: str, replica_id: str, gateway: GatewayDep) -> JSONResponse:
    """200 when removed at once; 202 while its requests finish (it is removed after them)."""
    nodes = gateway.nodes
    replica = nodes.replica(pool, replica_id)
    if nodes.remove(replica):
        return JSONResponse({"id": replica.id, "status": "removed"})
    return JSONResponse(nodes.describe(replica) | {"status": "draining"}, status_code=202)


@router.post("/pools/{pool}/replicas/{replica_id}/drain", dependencies=changes)
async def drain_replica(pool: str, replica_id: str, gateway: GatewayDep) -> dict[str, Any]:
    nodes = gateway.nodes
    replica = nodes.replica(pool, replica_id)
    nodes.drain(replica)
    return nodes.describe(replica)


@router.post("/pools/{pool}/replicas/{replica_id}/undrain", dependencies=changes)
async def undrain_replica(pool: str, replica_id: str, gateway: GatewayDep) -> dict[str, Any]:
    nodes = gateway.nodes
    replica = nodes.replica(pool, replica_id)
    nodes.undrain(replica)
    return nodes.describe(replica)
