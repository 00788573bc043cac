"""`/v1/chat/completions` and `/v1/completions`: the generating routes, and the only ones
that open a span (probes, scrapes and polls would drown the traces that matter)."""

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind
from pydantic import BaseModel

from engines.base import Engine, ModelNotFound
from engines.server.body import parse
from engines.server.deps import EngineDep, ServingDep
from engines.server.serving import Generation
from protocol import SSE_HEADERS, ChatCompletionRequest, CompletionRequest, tracing
from protocol.asgi import CancelOnDisconnect

__all__ = ["router"]

router = APIRouter()

tracer = trace.get_tracer("switchyard.engine")


def _span(name: str, request: Request) -> AbstractContextManager[Span]:
    """The engine's span for a request, in the caller's trace when it sent a `traceparent`
    (the gateway does). A stream's span ends when its answer starts."""
    return tracing.span(
        tracer,
        f"engine.{name}",
        context=tracing.extract(request.headers),
        kind=SpanKind.SERVER,
        attributes={"switchyard.request_id": request.headers.get("x-request-id", "")},
    )


def _adapter_for(engine: Engine, model: str) -> str | None:
    """None for the base model, the adapter's name for a loaded adapter."""
    if model == engine.model_name:
        return None
    if model in engine.adapters:
        return model
    raise ModelNotFound(model)


async def _respond(
    request: Request,
    stream: bool,
    generation: Generation,
    whole: Callable[[Generation], Awaitable[BaseModel]],
    chunks: Callable[[Generation], AsyncIterator[bytes]],
) -> Response:
    if stream:
        return StreamingResponse(chunks(generation), media_type="text/event-stream", headers=SSE_HEADERS)
    async with CancelOnDisconnect(request):
        body = await whole(generation)
    return JSONResponse(body.model_dump())


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, engine: EngineDep, serving: ServingDep) -> Response:
    with _span("chat", request):
        chat = await parse(request, ChatCompletionRequest)
        generation = serving.prepare_chat(chat, _adapter_for(engine, chat.model))
        return await _respond(
            request,
            chat.stream,
            generation,
            lambda g: serving.chat(chat, g),
            lambda g: serving.chat_stream(chat, g),
        )


@router.post("/v1/completions")
async def completions(request: Request, engine: EngineDep, serving: ServingDep) -> Response:
    with _span("completion", request):
        completion = await parse(request, CompletionRequest)
        generation = serving.prepare_completion(completion, _adapter_for(engine, completion.model))
        return await _respond(
            request,
            completion.stream,
            generation,
            lambda g: serving.completion(completion, g),
            lambda g: serving.completion_stream(completion, g),
        )
