"""What probes, Prometheus and the gateway poll: `/health`, `/metrics`, `/v1/models`.

`/health` answers 503 when the engine finds itself broken (`SelfChecking`), so the
gateway's probe takes the replica out of rotation.
"""

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from engines.base import EngineFault, SelfChecking
from engines.server.deps import EngineDep, MetricsDep, ModelRootDep
from protocol import ModelCard, ModelList, error_payload

__all__ = ["router"]

router = APIRouter()


@router.get("/v1/models")
async def models(engine: EngineDep, model_root: ModelRootDep) -> dict[str, Any]:
    cards = [ModelCard(id=engine.model_name, root=model_root)]
    cards += [ModelCard(id=name, root=path, parent=engine.model_name) for name, path in engine.adapters.items()]
    return ModelList(data=cards).model_dump()


@router.get("/health")
async def health(engine: EngineDep) -> Response:
    if isinstance(engine, SelfChecking):
        try:
            await engine.check_health()
        except EngineFault as exc:
            payload = error_payload(str(exc), "server_error", code="engine_unhealthy")
            return JSONResponse(payload, status_code=503)
    return Response(status_code=200)


@router.get("/metrics")
async def prometheus(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
