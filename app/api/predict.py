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
from app.api.deps import gateway_of
from app.api.keys import routing_key_of
from app.context import context_of
from app.errors import InvalidRequest, NoEngineAvailable, UpstreamFailed
from app.pipeline.call import Call, Handler
from app.reliability.limits import estimate_tokens
from protocol import ChatCompletion, ChatCompletionRequest

__all__ = ["PredictAnswer", "PredictRequest", "default_model", "predict"]

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
    gateway = gateway_of(request)
    principal = await gateway.guard.check(request.headers, "chat", context_of(request.scope))
    body = await read_json_body(request, gateway.settings.max_body_bytes)
    ask = parse_body(body, PredictRequest)
    # Every replica's models, healthy or not: a default that changed while a pool is down would
    # silently send these clients to another model.
    model = ask.model or default_model(gateway.settings.default_model, gateway.registry.model_cards(every_replica=True))
    fields: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": ask.text}]}
    fields |= {k: v for k, v in (("max_tokens", ask.max_tokens), ("temperature", ask.temperature)) if v is not None}
    chat_body = json.dumps(fields).encode()
    chat = parse_body(chat_body, ChatCompletionRequest)
    gateway.check_model(principal, model)
    key = routing_key_of(request.headers, chat)
    tokens = estimate_tokens(chat_body, chat.token_limit())
    # Keyed by `/predict` and its own body: a retry of the same prediction replays its answer.
    call = gateway.call(
        request, principal, _ROUTE, body, chat, path=_UPSTREAM, body=chat_body, routing_key=key, tokens=tokens
    )
    return await gateway.predict(call)


class PredictAnswer:
    """The layer that gives `/predict` its answer's shape: between idempotency (which keeps the
    translated answer) and the rest of the pipeline (which answers a chat completion)."""

    def __init__(self, next: Handler) -> None:
        self._next = next

    async def __call__(self, call: Call) -> Response:
        return _translated(await self._next(call))


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
