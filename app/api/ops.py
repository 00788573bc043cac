"""Liveness, readiness, pool status and the metrics."""

import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.deps import GatewayDep, scoped
from app.errors import NoEngineAvailable

__all__ = ["router"]

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/metrics")
async def metrics(gateway: GatewayDep) -> Response:
    """Prometheus text; open like the probes (scrapers carry no tokens): bounded labels only."""
    return Response(gateway.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/ready")
async def ready(gateway: GatewayDep) -> JSONResponse:
    if not gateway.registry.any_healthy():
        raise NoEngineAvailable("No engine is reachable.")
    return JSONResponse({"status": "ready"})


@router.get("/status", dependencies=[scoped("admin")])
async def status(gateway: GatewayDep) -> dict[str, Any]:
    return {"region": gateway.settings.region, "pools": gateway.registry.describe(time.monotonic())}
