"""The original platform's `/predict`: a one-turn chat, through the same pipeline as the OpenAI routes.

It is translated to a chat completion at the edge, so limits, admission, retries, idempotency
keys, request ids and trace context apply exactly as they do to `/v1/chat/completions`; only
the answer's shape differs.
"""

import json
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from app.api.body import parse_body, read_json_body
from app.api.deps import gateway_of, guard_of
from app.api.openai import tenant_of
from app.errors import InvalidRequest, NoEngineAvailable, UpstreamFailed
from app.observability.metrics import label_model
from app.pools.choice import chat_key
from app.reliability.limits import estimate_tokens
from protocol import ChatCompletion, ChatCompletionRequest

__all__ = ["PredictRequest", "default_model", "predict"]

_ROUTE = "/predict"
_UPSTREAM = "/v1/chat/completions"
# The headers of the engine's answer that the translated one does not keep (it has its own).
_DROPPED = frozenset({"content-length", "content-type"})


class PredictRequest(BaseModel):
    """A one-turn chat: `{"text": ...}`, optionally with the model and limits."""

    model_config = ConfigDict(strict=True, extra="forbid")

    text: str = Field(min_length=1)
    model: str | None = Field(default=None, min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=2**31 - 1)
    temperature: float | None = Field(default=None, ge=0, le=2)


async def predict(request: Request) -> Response:
    principal = await guard_of(request).check(request.headers, "chat")
    gateway = gateway_of(request)
    body = await read_json_body(request, gateway.settings.max_body_bytes)
    ask = parse_body(body, PredictRequest)
    # Every replica's models, healthy or not: a default that changed while a pool is down would
    # silently send these clients to another model.
    model = ask.model or default_model(gateway.settings.default_model, gateway.registry.model_cards(every_replica=True))
    fields: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": ask.text}]}
    fields |= {k: v for k, v in (("max_tokens", ask.max_tokens), ("temperature", ask.temperature)) if v is not None}
    chat_body = json.dumps(fields).encode()
    chat = parse_body(chat_body, ChatCompletionRequest)
    key = chat_key(request.headers, chat)
    tenant = tenant_of(principal, None)
    label_model(request.scope, model, gateway.registry.known_models, tenant)
    tokens = estimate_tokens(chat_body, chat.token_limit())

    async def answer() -> Response:
        response = await gateway.dispatch(request, _UPSTREAM, model, key, chat_body, tenant, tokens)
        return _translated(response)

    # Keyed by `/predict` and its own body: a retry of the same prediction replays its answer.
    return await gateway.idempotency.run(request, tenant, _ROUTE, body, answer)


def default_model(configured: str | None, cards: list[dict[str, Any]]) -> str:
    """The `default_model` setting when set, else the one base model among the served `cards`.

    Adapters never count: publishing one must not change what a client without `model` gets;
    with several base models the client has to say which.
    """
    if configured:
        return configured
    bases = sorted(str(card["id"]) for card in cards if not card.get("parent"))
    if len(bases) == 1:
        return bases[0]
    if not bases:
        raise NoEngineAvailable("No engine is reachable.")
    raise InvalidRequest(
        f"`model` is required: this gateway serves {len(bases)} base models ({', '.join(bases[:5])}).", param="model"
    )


def _translated(response: Response) -> Response:
    """The engine's chat completion as `/predict` answers it; errors pass through as they are."""
    if response.status_code != 200:
        return response
    try:
        completion = ChatCompletion.model_validate_json(bytes(response.body))
    except ValueError as exc:
        raise UpstreamFailed("The engine answered with an unreadable chat completion.") from exc
    if not completion.choices:
        raise UpstreamFailed("The engine answered a chat completion without choices.")
    choice = completion.choices[0]
    headers = {k: v for k, v in response.headers.items() if k not in _DROPPED}
    return JSONResponse(
        {
            "text": choice.message.content,
            "model": completion.model,
            "finish_reason": choice.finish_reason,
            "usage": completion.usage.model_dump(),
        },
        headers=headers,
    )
