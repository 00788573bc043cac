"""The engine's HTTP surface: OpenAI routes, LoRA adapter management, `/health`, `/metrics`, `/v1/models`.

Errors leave as the OpenAI envelope, so the gateway treats every engine alike. With an
API key configured, every route but `/health` and `/metrics` needs it (`engines.server.auth`).
`/health` answers 503 when the engine finds itself broken (`SelfChecking`), so the
gateway's probe takes the replica out of rotation.
"""

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager, asynccontextmanager
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from engines.base import Engine, EngineError, EngineFault, EngineOverloaded, InvalidRequest, ModelNotFound, SelfChecking
from engines.server.auth import ApiKeyGuard, check_api_key
from engines.server.errors import error_answer
from engines.server.errors import log as errors_log
from engines.server.metrics import EngineMetrics
from engines.server.serving import Generation, OpenAIServing
from protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    LoadLoraAdapterRequest,
    ModelCard,
    ModelList,
    UnloadLoraAdapterRequest,
    describe_validation_error,
    error_payload,
    tracing,
)
from protocol.asgi import CancelOnDisconnect, CatchAll, ClientDisconnected

__all__ = ["create_app"]

M = TypeVar("M", bound=BaseModel)

SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


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


def create_app(engine: Engine, *, model_root: str | None = None, api_key: str | None = None) -> FastAPI:
    serving = OpenAIServing(engine)
    metrics = EngineMetrics(engine)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await engine.aclose()

    app = FastAPI(title="switchyard engine", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(CatchAll, answer=error_answer, log=errors_log)
    if api_key is not None:  # an empty key is refused here, never taken for "no key"
        check_api_key(api_key)  # now: starlette builds the guard only when the first request comes
        app.add_middleware(ApiKeyGuard, api_key=api_key)  # added last: it runs first

    @app.exception_handler(EngineError)
    async def engine_error(_: Request, exc: EngineError) -> JSONResponse:
        status, payload = error_answer(exc)
        response = JSONResponse(payload, status_code=status)
        if isinstance(exc, EngineOverloaded):
            response.headers["retry-after"] = str(exc.retry_after_s)
        return response

    @app.exception_handler(ClientDisconnected)
    async def gone(_: Request, __: ClientDisconnected) -> Response:
        return Response(status_code=499)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(error_payload(str(exc.detail), type_), status_code=exc.status_code)

    async def parse(request: Request, model: type[M]) -> M:
        try:
            return model.model_validate_json(await request.body())
        except ValidationError as exc:
            message, param = describe_validation_error(exc)
            raise InvalidRequest(message, param) from None

    def adapter_for(model: str) -> str | None:
        """None for the base model, the adapter's name for a loaded adapter."""
        if model == engine.model_name:
            return None
        if model in engine.adapters:
            return model
        raise ModelNotFound(model)

    async def respond(
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

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        with _span("chat", request):
            chat = await parse(request, ChatCompletionRequest)
            generation = serving.prepare_chat(chat, adapter_for(chat.model))
            return await respond(
                request,
                chat.stream,
                generation,
                lambda g: serving.chat(chat, g),
                lambda g: serving.chat_stream(chat, g),
            )

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        with _span("completion", request):
            completion = await parse(request, CompletionRequest)
            generation = serving.prepare_completion(completion, adapter_for(completion.model))
            return await respond(
                request,
                completion.stream,
                generation,
                lambda g: serving.completion(completion, g),
                lambda g: serving.completion_stream(completion, g),
            )

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        cards = [ModelCard(id=engine.model_name, root=model_root or engine.model_name)]
        cards += [ModelCard(id=name, root=path, parent=engine.model_name) for name, path in engine.adapters.items()]
        return ModelList(data=cards).model_dump()

    @app.post("/v1/load_lora_adapter")
    async def load_lora_adapter(request: Request) -> PlainTextResponse:
        load = await parse(request, LoadLoraAdapterRequest)
        if load.lora_name == engine.model_name:
            raise InvalidRequest(
                f"The lora adapter '{load.lora_name}' conflicts with a served base model.", "lora_name"
            )
        await engine.load_adapter(load.lora_name, load.lora_path, replace=load.load_inplace)
        return PlainTextResponse(f"Success: LoRA adapter '{load.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora_adapter(request: Request) -> PlainTextResponse:
        unload = await parse(request, UnloadLoraAdapterRequest)
        await engine.unload_adapter(unload.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{unload.lora_name}' removed successfully.")

    @app.get("/health")
    async def health() -> Response:
        if isinstance(engine, SelfChecking):
            try:
                await engine.check_health()
            except EngineFault as exc:
                payload = error_payload(str(exc), "server_error", code="engine_unhealthy")
                return JSONResponse(payload, status_code=503)
        return Response(status_code=200)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    return app
