"""Open routes for probes and Prometheus: `/health` and `/metrics`."""

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from sync.deps import MetricsDep, SettingsDep

__all__ = ["router"]

router = APIRouter()


@router.get("/health")
async def health(settings: SettingsDep) -> dict[str, str]:
    return {"status": "ok", "region": settings.region, "role": settings.role}


@router.get("/metrics", include_in_schema=False)
async def metrics_text(metrics: MetricsDep) -> Response:
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
