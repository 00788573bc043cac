"""Liveness, readiness, pool status, and the original platform's `/predict` alias."""

import json
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field

from app.deps import GatewayDep, scoped
from app.engine_errors import normalize_error
from app.errors import NoEngineAvailable, UpstreamFailed
from app.gateway import Gateway
from app.inputs import parse_body, read_json_body
from app.metrics import label_model
from app.routing import SESSION_HEADER, choose
from protocol import ChatCompletion
from router import routing_key

__all__ = ["router"]

router = APIRouter()


class PredictRequest(BaseModel):
    """A one-turn chat: `{"text": ...}`, optionally with the model and limits."""

    model_config = ConfigDict(strict=True, extra="forbid")

    text: str = Field(min_length=1)
    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text; open like the probes (scrapers carry no tokens): bounded labels only."""
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/ready")
async def ready(gateway: GatewayDep) -> JSONResponse:
    if not gateway.registry.any_healthy():
        raise NoEngineAvailable("No engine is reachable.")
    return JSONResponse({"status": "ready"})


@router.get("/status", dependencies=[scoped("admin")])
async def status(gateway: GatewayDep) -> dict[str, Any]:
    return {"region": gateway.settings.region, "pools": gateway.registry.describe(time.monotonic())}


@router.post("/predict", dependencies=[scoped("chat")])
async def predict(request: Request, gateway: GatewayDep) -> JSONResponse:
    body = await read_json_body(request, gateway.settings.max_body_bytes)
    ask = parse_body(body, PredictRequest)
    model = ask.model or gateway.settings.default_model or _first_model(gateway)
    label_model(request.scope, model, gateway.registry.known_models)
    chat: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": ask.text}]}
    chat |= {k: v for k, v in (("max_tokens", ask.max_tokens), ("temperature", ask.temperature)) if v is not None}
    key = routing_key(model=model, session_id=request.headers.get(SESSION_HEADER), user=None, prompt_head=ask.text)
    decision = choose(gateway.registry, model, key, time.monotonic())
    status_code, answer = await gateway.proxy.call(
        decision.node.acquire(), "/v1/chat/completions", json.dumps(chat).encode(), gateway.deadline(request)
    )
    try:
        if status_code != 200:
            return JSONResponse(json.loads(normalize_error(status_code, answer)), status_code=status_code)
        completion = ChatCompletion.model_validate_json(answer)
    except ValueError as exc:
        raise UpstreamFailed(f"The engine answered {status_code} with an unreadable body.") from exc
    choice = completion.choices[0]
    return JSONResponse(
        {
            "text": choice.message.content,
            "model": completion.model,
            "finish_reason": choice.finish_reason,
            "usage": completion.usage.model_dump(),
        }
    )


def _first_model(gateway: Gateway) -> str:
    cards = gateway.registry.model_cards()
    if not cards:
        raise NoEngineAvailable("No engine is reachable.")
    return str(cards[0]["id"])
