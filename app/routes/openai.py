"""The OpenAI API: chat and text completions, and the models the pools serve."""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.deps import GatewayDep
from app.inputs import parse_body, read_json_body
from protocol import ChatCompletionRequest, CompletionRequest

__all__ = ["router"]

router = APIRouter()


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, gateway: GatewayDep) -> Response:
    body = await read_json_body(request, gateway.settings.max_body_bytes)
    chat = parse_body(body, ChatCompletionRequest)
    return await gateway.dispatch(request, "/v1/chat/completions", chat.model, body)


@router.post("/v1/completions")
async def completions(request: Request, gateway: GatewayDep) -> Response:
    body = await read_json_body(request, gateway.settings.max_body_bytes)
    completion = parse_body(body, CompletionRequest)
    return await gateway.dispatch(request, "/v1/completions", completion.model, body)


@router.get("/v1/models")
async def models(gateway: GatewayDep) -> dict[str, Any]:
    return {"object": "list", "data": gateway.registry.model_cards()}
