"""Typed dependencies for the engine's routes: the parts `create_app` keeps in `app.state`."""

from typing import Annotated

from fastapi import Depends, Request

from engines.base import Engine
from engines.server.metrics import EngineMetrics
from engines.server.serving import OpenAIServing

__all__ = ["EngineDep", "MetricsDep", "ModelRootDep", "ServingDep"]


# Async, all of them: FastAPI runs a plain function dependency on a worker thread.


async def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def _serving(request: Request) -> OpenAIServing:
    serving: OpenAIServing = request.app.state.serving
    return serving


async def _metrics(request: Request) -> EngineMetrics:
    metrics: EngineMetrics = request.app.state.metrics
    return metrics


async def _model_root(request: Request) -> str:
    """Where the base model was loaded from, as `/v1/models` shows it (its name when not given)."""
    root: str = request.app.state.model_root
    return root


EngineDep = Annotated[Engine, Depends(_engine)]
ServingDep = Annotated[OpenAIServing, Depends(_serving)]
MetricsDep = Annotated[EngineMetrics, Depends(_metrics)]
ModelRootDep = Annotated[str, Depends(_model_root)]
