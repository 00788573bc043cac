"""What the routes reach: the gateway's parts, as one typed object, and the dependencies on it."""

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from starlette.datastructures import Headers

from app.auth import Guard, Principal
from app.auth.issuer import Issuer
from app.context import context_of
from app.errors import ModelNotFound
from app.finetuning import FineTuning
from app.observability.metrics import GatewayMetrics
from app.observability.usage import UsageReports
from app.pipeline.call import Call, Handler
from app.pools.membership import NodeManager
from app.pools.registry import PoolRegistry
from app.reliability.deadlines import Deadline
from app.settings import GatewaySettings
from protocol import ChatCompletionRequest, CompletionRequest
from protocol.fine_tuning import is_fine_tuned, owned_by, owner_tag

__all__ = ["EdgeSettings", "Gateway", "GatewayDep", "gateway_of", "guard_of", "scoped"]


@dataclass(frozen=True, slots=True)
class EdgeSettings:
    """The settings the routes read."""

    region: str
    workers: int
    max_body_bytes: int
    request_timeout_s: float  # a request's deadline when its client sends none
    max_request_timeout_s: float
    default_model: str | None
    max_stored_bytes_per_tenant: int  # a tenant's files together
    max_active_jobs_per_tenant: int  # a tenant's unfinished fine-tuning jobs

    @classmethod
    def of(cls, settings: GatewaySettings) -> "EdgeSettings":
        return cls(
            settings.region,
            settings.workers,
            settings.max_body_bytes,
            settings.request_timeout_s,
            settings.max_request_timeout_s,
            settings.default_model,
            settings.max_stored_bytes_per_tenant,
            settings.max_active_jobs_per_tenant,
        )


@dataclass(frozen=True, slots=True)
class Gateway:
    """The gateway's parts the routes use; built once by the app factory."""

    settings: EdgeSettings
    completions: Handler  # the pipeline of the completion routes
    predict: Handler  # the same, with `/predict`'s answer
    registry: PoolRegistry
    nodes: NodeManager
    metrics: GatewayMetrics
    guard: Guard
    issuer: Issuer | None
    finetuning: FineTuning
    usage: UsageReports  # per tenant and minute: this process's, or the region's through Redis

    def call(
        self,
        request: Request,
        principal: Principal | None,
        route: str,
        raw: bytes,
        wire: ChatCompletionRequest | CompletionRequest,
        *,
        path: str,
        body: bytes,
        routing_key: str,
        tokens: int,
    ) -> Call:
        """A validated request as the pipeline takes it (its deadline starts now)."""
        tenant = tenant_of(principal, wire.user)
        context = context_of(request.scope)
        context.label(wire.model, self.registry.known_models, tenant)
        if principal is None:  # else the guard named the caller
            context.annotate({"enduser.id": tenant})
        deadline = self.deadline(request.headers)
        return Call(request, context, route, raw, path, body, wire.model, routing_key, tenant, tokens, deadline)

    def check_model(self, principal: Principal | None, model: str) -> None:
        """ModelNotFound for a fine-tuned model that is not the caller's: one tenant's trained
        adapter is neither listed to nor usable by another (with authentication off, there is
        no other to keep it from). Told from the name alone: no database is asked."""
        if principal is not None and is_fine_tuned(model) and not owned_by(model, principal.subject):
            raise ModelNotFound(model)

    def visible_cards(self, principal: Principal | None) -> list[dict[str, Any]]:
        """The model cards the caller may see: every base model, and its own fine-tuned ones
        (an operator's token, scope `admin`, sees all)."""
        cards = self.registry.model_cards()
        if principal is None or "admin" in principal.scopes:
            return cards
        tag = owner_tag(principal.subject)
        return [card for card in cards if not is_fine_tuned(card["id"]) or owned_by(card["id"], principal.subject, tag)]

    def deadline(self, headers: Headers) -> Deadline:
        return Deadline.from_headers(
            headers, default_s=self.settings.request_timeout_s, max_s=self.settings.max_request_timeout_s
        )


def tenant_of(principal: Principal | None, user: str | None) -> str:
    """The token's subject; with authentication disabled, the `user` field, else `anonymous`."""
    if principal is not None:
        return principal.subject
    return user or "anonymous"


def gateway_of(request: Request) -> Gateway:
    """For the plain Starlette routes (app/api/completions.py says why they are plain)."""
    gateway: Gateway = request.app.state.gateway
    return gateway


async def _gateway(request: Request) -> Gateway:  # async: FastAPI runs sync dependencies on a thread
    return gateway_of(request)


GatewayDep = Annotated[Gateway, Depends(_gateway)]


def guard_of(request: Request) -> Guard:
    return gateway_of(request).guard


def scoped(scope: str) -> Any:
    """A dependency: the caller's principal holding `scope` (None when authentication is off)."""

    async def principal(request: Request) -> Principal | None:
        return await guard_of(request).check(request.headers, scope)

    return Depends(principal)
