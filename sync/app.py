"""The sidecar's app: adapters for operators, `/sync/*` and `/blobs/*` for peers (sync/routes).

Writes need an operator's token, peer routes the peer key (sync/auth.py). Errors use the
OpenAI envelope like the gateway's (sync/errors.py): 400 for a malformed body or an adapter
the engines must not see (with the reason), 401/403 for a missing credential or scope, 403
for publishing at an edge site, 404 for an unknown name, version, blob or path, 405 for a
method a route does not take, 409 for a peer whose clock is too far ahead, 413 for a message
or upload over the limit, 416 for a range past a blob's end, and 500, logged, for a bug.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from pydantic import SecretStr

from protocol.asgi import NO_FRAMEWORK_TELEMETRY
from protocol.background import running
from sync.auth import SidecarAuth
from sync.errors import install_error_handlers
from sync.node import SyncNode
from sync.peers import Peers
from sync.reconcile import Reconciler
from sync.routes import adapters, ops, peers
from sync.settings import SyncSettings
from sync.telemetry import SyncMetrics

__all__ = ["create_app"]


def create_app(settings: SyncSettings) -> FastAPI:
    app = FastAPI(title="switchyard-sync", lifespan=_lifespan, telemetry=NO_FRAMEWORK_TELEMETRY)
    app.state.settings = settings
    app.state.node = SyncNode(settings)
    app.state.metrics = SyncMetrics()
    app.state.auth = SidecarAuth(settings)
    install_error_handlers(app)
    app.include_router(ops.router)
    app.include_router(adapters.router)
    app.include_router(peers.router)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The peers' and the engines' clients, and the loops that use them, while the app serves."""
    settings: SyncSettings = app.state.settings
    node: SyncNode = app.state.node
    # One client per plane, each with its own credential: the peer key never reaches an
    # engine, nor the engines' key a peer.
    timeout = settings.peer_timeout_s
    async with (
        httpx.AsyncClient(timeout=timeout, headers=_bearer(settings.peer_key)) as to_peers,
        httpx.AsyncClient(timeout=timeout, headers=_bearer(settings.engine_api_key)) as to_engines,
    ):
        peers = Peers(node, to_peers)
        reconciler = Reconciler(node, peers, to_engines)
        metrics: SyncMetrics = app.state.metrics
        metrics.watch(node, peers, reconciler)
        app.state.peers, app.state.reconciler = peers, reconciler
        async with running(peers.run()), running(reconciler.run()):
            yield


def _bearer(secret: SecretStr | None) -> dict[str, str]:
    return {"authorization": f"Bearer {secret.get_secret_value()}"} if secret else {}
