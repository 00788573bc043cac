"""Typed dependencies for the routes."""

from typing import Annotated, Any

from fastapi import Depends, Request

from app.auth import Guard, Principal
from app.pipeline.gateway import Gateway
from app.pools.membership import NodeManager

__all__ = ["GatewayDep", "NodesDep", "gateway_of", "guard_of", "scoped"]


def gateway_of(request: Request) -> Gateway:
    """For the completion routes, which are plain Starlette routes (app/api/openai.py)."""
    gateway: Gateway = request.app.state.gateway
    return gateway


async def _gateway(request: Request) -> Gateway:  # async: FastAPI runs sync dependencies on a thread
    return gateway_of(request)


GatewayDep = Annotated[Gateway, Depends(_gateway)]


async def _nodes(request: Request) -> NodeManager:
    nodes: NodeManager = request.app.state.nodes
    return nodes


NodesDep = Annotated[NodeManager, Depends(_nodes)]


def guard_of(request: Request) -> Guard:
    guard: Guard = request.app.state.guard
    return guard


def scoped(scope: str) -> Any:
    """A dependency: the caller's principal holding `scope` (None when authentication is off)."""

    async def principal(request: Request) -> Principal | None:
        return await guard_of(request).check(request.headers, scope)

    return Depends(principal)
