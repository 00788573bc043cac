"""The values every layer of the pipeline reads, and the two shapes a layer's `next` takes.

A route turns a validated request into a `Call` once; from there each layer passes it on
unchanged. Above admission a layer's next is a `Handler` (the call alone); from admission
down it is a `Forward`: the call and the replica it was given (`Placement`).
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import Response

from app.context import RequestContext
from app.pools.registry import Lease, Replica
from app.reliability.deadlines import Deadline
from router import Decision

__all__ = ["Call", "Forward", "Handler", "Placement"]


@dataclass(frozen=True, slots=True)
class Call:
    """One generating request on its way to an engine."""

    request: Request  # its connection: the headers, and the disconnect that cancels the upstream request
    context: RequestContext
    route: str  # the client's route: idempotency keys are scoped by it
    raw: bytes  # the client's body as sent: what an idempotency key's fingerprint covers
    path: str  # the engine's route
    body: bytes  # what the engine gets (the client's body but on `/predict`)
    model: str
    routing_key: str
    tenant: str
    tokens: int  # the estimated cost, charged to the tenant's rate limits before it runs
    deadline: Deadline


@dataclass(frozen=True, slots=True)
class Placement:
    """The replica an attempt goes to, and its share of that replica's load."""

    decision: Decision[Replica]
    lease: Lease
    attempt: int  # 1 for the first


Handler = Callable[[Call], Awaitable[Response]]
Forward = Callable[[Call, Placement], Awaitable[Response]]
