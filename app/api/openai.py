"""The OpenAI API: chat and text completions, and the models the pools serve.

The two completion endpoints are plain Starlette routes: FastAPI's per-request machinery
(dependency solving, its exit stack) cost them 15 % of their throughput (docs/benchmarks.md),
and they parse and validate their own bodies anyway.
"""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.routing import Route

from app.api.body import parse_body, read_json_body
from app.api.deps import GatewayDep, gateway_of, guard_of, scoped
from app.auth import Principal
from app.errors import ModelNotFound
from app.observability.metrics import label_model
from app.pools.choice import chat_key, completion_key
from app.reliability.limits import estimate_tokens
from protocol import ChatCompletionRequest, CompletionRequest

__all__ = ["completion_routes", "router"]

router = APIRouter()


def tenant_of(principal: Principal | None, user: str | None) -> str:
    """The token's subject; with authentication disabled, the `user` field, else `anonymous`."""
    if principal is not None:
        return principal.subject
    return user or "anonymous"


async def chat_completions(request: Request) -> Response:
    principal = await guard_of(request).check(request.headers, "chat")
    gateway = gateway_of(request)
    body = await read_json_body(request, gateway.settings.max_body_bytes)
    chat = parse_body(body, ChatCompletionRequest)
    key = chat_key(request.headers, chat)
    path = "/v1/chat/completions"
    tenant = tenant_of(principal, chat.user)
    label_model(request.scope, chat.model, gateway.registry.known_models, tenant)
    tokens = estimate_tokens(body, chat.token_limit())
    return await gateway.idempotency.run(
        request, tenant, path, body, lambda: gateway.dispatch(request, path, chat.model, key, body, tenant, tokens)
    )


async def completions(request: Request) -> Response:
    principal = await guard_of(request).check(request.headers, "chat")
    gateway = gateway_of(request)
    body = await read_json_body(request, gateway.settings.max_body_bytes)
    completion = parse_body(body, CompletionRequest)
    key = completion_key(request.headers, completion)
    path = "/v1/completions"
    tenant = tenant_of(principal, completion.user)
    label_model(request.scope, completion.model, gateway.registry.known_models, tenant)
    tokens = estimate_tokens(body, completion.max_tokens)
    return await gateway.idempotency.run(
        request,
        tenant,
        path,
        body,
        lambda: gateway.dispatch(request, path, completion.model, key, body, tenant, tokens),
    )


@router.get("/v1/models", dependencies=[scoped("chat")])
async def models(gateway: GatewayDep) -> dict[str, Any]:
    return {"object": "list", "data": gateway.registry.model_cards()}


@router.get("/v1/models/{model:path}", dependencies=[scoped("chat")])
async def model(model: str, gateway: GatewayDep) -> dict[str, Any]:
    """One model's card (the SDK's `models.retrieve`); ids may hold `/` (hub ids) and `:`."""
    card = next((card for card in gateway.registry.model_cards() if card["id"] == model), None)
    if card is None:
        raise ModelNotFound(model)
    return card


completion_routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
]
