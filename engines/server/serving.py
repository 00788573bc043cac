"""OpenAI chat and text completions over an engine: prompts in, responses and SSE chunks out."""

import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from engines.base import Engine, EngineError, GenerationRequest, InvalidRequest, TokenChunk
from engines.server.errors import error_answer
from engines.server.textstream import TextStream
from protocol import (
    DONE_EVENT,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    Completion,
    CompletionChoice,
    CompletionRequest,
    FinishReason,
    ResponseMessage,
    SamplingParams,
    Usage,
    sse_event,
)

__all__ = ["Generation", "OpenAIServing", "TextPiece"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TextPiece:
    text: str
    finish_reason: FinishReason | None = None


@dataclass(slots=True)
class Generation:
    """One request's prompt and limits, ready to run."""

    prompt_ids: list[int]
    request: GenerationRequest
    stops: list[str]
    chunks: AsyncGenerator[TokenChunk, None]
    completion_tokens: int = 0

    @property
    def usage(self) -> Usage:
        prompt = len(self.prompt_ids)
        return Usage(
            prompt_tokens=prompt,
            completion_tokens=self.completion_tokens,
            total_tokens=prompt + self.completion_tokens,
        )


# Fields the OpenAI API defines that this server does not implement: refusing beats ignoring.
_UNSUPPORTED = ("tools", "functions", "logit_bias", "logprobs", "top_logprobs", "suffix")


class OpenAIServing:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    # --- preparing a request -------------------------------------------------------------

    def prepare_chat(self, request: ChatCompletionRequest, adapter: str | None = None) -> Generation:
        messages = []
        for i, message in enumerate(request.messages):
            if isinstance(message.content, list) and any(p.type != "text" for p in message.content):
                raise InvalidRequest("only text content parts are supported", f"messages[{i}].content")
            messages.append({"role": message.role, "content": message.text()})
        prompt_ids = self._engine.encode_chat(messages)
        return self._prepare(prompt_ids, request, request.token_limit(), "messages", adapter)

    def prepare_completion(self, request: CompletionRequest, adapter: str | None = None) -> Generation:
        try:
            prompt = request.single_prompt()
        except ValueError as exc:
            raise InvalidRequest(str(exc), "prompt") from exc
        prompt_ids = self._engine.encode(prompt) if isinstance(prompt, str) else prompt
        if not prompt_ids:
            raise InvalidRequest("the prompt is empty", "prompt")
        return self._prepare(prompt_ids, request, request.max_tokens, "prompt", adapter)

    def _prepare(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        token_limit: int | None,
        prompt_param: str,
        adapter: str | None,
    ) -> Generation:
        _refuse_unsupported(params)
        # Checked before the request joins the batch: an id outside the vocabulary would fail
        # the model's embedding lookup in the middle of everyone's generation.
        vocab_size = self._engine.vocab_size
        outside = next((i for i in prompt_ids if not 0 <= i < vocab_size), None)
        if outside is not None:
            raise InvalidRequest(
                f"Token id {outside} is out of vocabulary: this model's token ids go from 0 to {vocab_size - 1}.",
                prompt_param,
            )
        room = self._engine.max_model_len - len(prompt_ids)
        if room <= 0:
            raise InvalidRequest(
                f"This model's maximum context length is {self._engine.max_model_len} tokens; "
                f"the prompt has {len(prompt_ids)} tokens.",
                prompt_param,
            )
        if token_limit is not None and token_limit > room:
            raise InvalidRequest(
                f"This model's maximum context length is {self._engine.max_model_len} tokens; "
                f"the prompt has {len(prompt_ids)} tokens and {token_limit} were asked for.",
                "max_tokens",
            )
        request = GenerationRequest(
            prompt_ids=prompt_ids,
            max_new_tokens=token_limit or room,
            temperature=1.0 if params.temperature is None else params.temperature,
            top_p=1.0 if params.top_p is None else params.top_p,
            seed=params.seed,
            adapter=adapter,
        )
        # Admitted now, so a full queue is a 503 before any response starts.
        return Generation(prompt_ids, request, params.stop_sequences(), self._engine.generate(request))

    # --- running it ----------------------------------------------------------------------

    async def text(self, generation: Generation) -> AsyncIterator[TextPiece]:
        """Text deltas; the last piece carries the finish reason."""
        stream = TextStream(self._engine.decode, generation.stops)
        async with aclosing(generation.chunks) as chunks:
            async for chunk in chunks:
                generation.completion_tokens += len(chunk.token_ids)
                delta = stream.push(chunk.token_ids)
                if stream.stopped:
                    yield TextPiece(delta, "stop")
                    return
                if chunk.finish_reason is not None:
                    rest = stream.finish()
                    yield TextPiece(delta + rest, "stop" if stream.stopped else chunk.finish_reason)
                    return
                if delta:
                    yield TextPiece(delta)

    async def complete_text(self, generation: Generation) -> tuple[str, FinishReason]:
        parts: list[str] = []
        finish: FinishReason = "length"
        async for piece in self.text(generation):
            parts.append(piece.text)
            finish = piece.finish_reason or finish
        return "".join(parts), finish

    async def chat(self, request: ChatCompletionRequest, generation: Generation) -> ChatCompletion:
        text, finish = await self.complete_text(generation)
        return ChatCompletion(
            id=_new_id("chatcmpl"),
            created=int(time.time()),
            model=request.model,
            choices=[ChatChoice(message=ResponseMessage(content=text), finish_reason=finish)],
            usage=generation.usage,
        )

    async def chat_stream(self, request: ChatCompletionRequest, generation: Generation) -> AsyncIterator[bytes]:
        chunk_id, created = _new_id("chatcmpl"), int(time.time())

        def chunk(choices: list[ChatChunkChoice], usage: Usage | None = None) -> bytes:
            body = ChatCompletionChunk(id=chunk_id, created=created, model=request.model, choices=choices, usage=usage)
            return sse_event(body.model_dump())

        yield chunk([ChatChunkChoice(delta=ChatDelta(role="assistant", content=""))])
        async for piece in _guarded(self.text(generation)):
            if isinstance(piece, bytes):
                yield piece
                return
            if piece.text:
                yield chunk([ChatChunkChoice(delta=ChatDelta(content=piece.text))])
            if piece.finish_reason is not None:
                yield chunk([ChatChunkChoice(delta=ChatDelta(), finish_reason=piece.finish_reason)])
        if request.include_usage_in_stream():
            yield chunk([], generation.usage)
        yield DONE_EVENT

    async def completion(self, request: CompletionRequest, generation: Generation) -> Completion:
        text, finish = await self.complete_text(generation)
        if request.echo:
            text = self._engine.decode(generation.prompt_ids) + text
        return Completion(
            id=_new_id("cmpl"),
            created=int(time.time()),
            model=request.model,
            choices=[CompletionChoice(text=text, finish_reason=finish)],
            usage=generation.usage,
        )

    async def completion_stream(self, request: CompletionRequest, generation: Generation) -> AsyncIterator[bytes]:
        chunk_id, created = _new_id("cmpl"), int(time.time())

        def chunk(choices: list[CompletionChoice], usage: Usage | None = None) -> bytes:
            body = Completion(id=chunk_id, created=created, model=request.model, choices=choices, usage=usage)
            return sse_event(body.model_dump())

        if request.echo:
            yield chunk([CompletionChoice(text=self._engine.decode(generation.prompt_ids), finish_reason=None)])
        async for piece in _guarded(self.text(generation)):
            if isinstance(piece, bytes):
                yield piece
                return
            if piece.text or piece.finish_reason is not None:
                yield chunk([CompletionChoice(text=piece.text, finish_reason=piece.finish_reason)])
        if request.include_usage_in_stream():
            yield chunk([], generation.usage)
        yield DONE_EVENT


async def _guarded(pieces: AsyncIterator[TextPiece]) -> AsyncIterator[TextPiece | bytes]:
    """Pieces, or one SSE error event (this stream's only) if generation fails once the stream has started."""
    try:
        async for piece in pieces:
            yield piece
    except Exception as exc:
        status, payload = error_answer(exc)
        if status >= 500 and not isinstance(exc, EngineError):
            log.exception("a stream failed")
        yield sse_event(payload)


def _refuse_unsupported(params: SamplingParams) -> None:
    extras: dict[str, Any] = params.model_extra or {}
    for name in _UNSUPPORTED:
        if getattr(params, name, None) not in (None, False, [], {}):  # declared fields and extras alike
            raise InvalidRequest(f"'{name}' is not supported by this engine", name)
    if getattr(params, "best_of", None) not in (None, 1):
        raise InvalidRequest("only best_of=1 is supported: one candidate per request", "best_of")
    response_format = extras.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type", "text") != "text":
        raise InvalidRequest("only the 'text' response format is supported by this engine", "response_format")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(params, name) not in (None, 0, 0.0):
            raise InvalidRequest(f"'{name}' is not supported by this engine", name)


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"
