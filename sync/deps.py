"""Typed dependencies for the sidecar's routes: the parts `create_app` keeps in `app.state`,
and the credential checks (sync/auth.py) a route names in its `dependencies`."""

from typing import Annotated

from fastapi import Depends, Request

import oauth
from sync.auth import SidecarAuth
from sync.node import SyncNode
from sync.reconcile import Reconciler
from sync.settings import SyncSettings
from sync.telemetry import SyncMetrics

__all__ = ["MetricsDep", "NodeDep", "PEER", "ReconcilerDep", "SettingsDep", "WRITER"]


# Async, all of them: FastAPI runs a plain function dependency on a worker thread.


async def _settings(request: Request) -> SyncSettings:
    settings: SyncSettings = request.app.state.settings
    return settings


async def _node(request: Request) -> SyncNode:
    node: SyncNode = request.app.state.node
    return node


async def _reconciler(request: Request) -> Reconciler:
    """Made in the lifespan, with the peers and the engines' client."""
    reconciler: Reconciler = request.app.state.reconciler
    return reconciler


async def _metrics(request: Request) -> SyncMetrics:
    metrics: SyncMetrics = request.app.state.metrics
    return metrics


async def _writer(request: Request) -> oauth.Principal | None:
    auth: SidecarAuth = request.app.state.auth
    return await auth.writer(request)


async def _peer(request: Request) -> None:
    auth: SidecarAuth = request.app.state.auth
    auth.peer(request)


SettingsDep = Annotated[SyncSettings, Depends(_settings)]
NodeDep = Annotated[SyncNode, Depends(_node)]
ReconcilerDep = Annotated[Reconciler, Depends(_reconciler)]
MetricsDep = Annotated[SyncMetrics, Depends(_metrics)]

# For `dependencies=[...]`: an operator's token with a write scope, or the peer key.
WRITER = Depends(_writer)
PEER = Depends(_peer)
