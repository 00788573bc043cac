"""The engine's HTTP app: OpenAI routes, LoRA adapter management, `/health`, `/metrics`,
`/v1/models` (engines/server/routes), wired to one engine.

Errors leave as the OpenAI envelope (engines/server/errors.py), so the gateway treats every
engine alike. With an API key configured, every route but `/health` and `/metrics` needs it
(`engines.server.auth`).
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from engines.base import Engine
from engines.server.auth import ApiKeyGuard, check_api_key
from engines.server.errors import install_error_handlers
from engines.server.metrics import EngineMetrics
from engines.server.routes import adapters, generate, ops
from engines.server.serving import OpenAIServing
from protocol.asgi import NO_FRAMEWORK_TELEMETRY

__all__ = ["create_app"]


def create_app(engine: Engine, *, model_root: str | None = None, api_key: str | None = None) -> FastAPI:
    app = FastAPI(
        title="switchyard engine", lifespan=_lifespan, docs_url=None, redoc_url=None, telemetry=NO_FRAMEWORK_TELEMETRY
    )
    app.state.engine = engine
    app.state.serving = OpenAIServing(engine)
    app.state.metrics = EngineMetrics(engine)
    app.state.model_root = model_root or engine.model_name
    install_error_handlers(app)
    if api_key is not None:  # an empty key is refused here, never taken for "no key"
        check_api_key(api_key)  # now: starlette builds the guard only when the first request comes
        app.add_middleware(ApiKeyGuard, api_key=api_key)  # added last: it runs first
    app.include_router(generate.router)
    app.include_router(ops.router)
    app.include_router(adapters.router)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    engine: Engine = app.state.engine
    await engine.aclose()
