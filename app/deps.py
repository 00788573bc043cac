"""Typed dependencies for the routes."""

from typing import Annotated

from fastapi import Depends, Request

from app.gateway import Gateway

__all__ = ["GatewayDep"]


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(_gateway)]
