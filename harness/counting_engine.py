"""A fake engine for reliability tests: it counts every execution and fails on command.

`python -m harness.counting_engine --port N` serves the OpenAI chat route for model
`counting`: JSON, or an SSE stream of `max_tokens` (else `chunks`) events `chunk_delay_s` apart
(then a usage chunk when `stream_options.include_usage`). `POST /control`
sets its behaviour and zeroes the counts (`fail_status` for the next `fail_times` requests, with `retry_after`
and the error's `fail_code`;
`stall_s` before answering; `chunks`, `chunk_delay_s`); `GET /executions` says how many
requests it executed, in all and per `x-request-id`. In process, `behave(...)` does what
`/control` does, and `stalled` says how many requests are in their stall right now (a stall
the gateway gave up on is cancelled, and leaves it).

For load tests: `--slots K` runs at most K requests at once (the rest wait inside, as in an
engine's batch), `--chunk-delay-s` sets the pace without a `/control` call, and `--log FILE`
appends one line per execution (`<port> <x-request-id>`), which outlives the process.
"""

import argparse
import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from protocol import DONE_EVENT, sse_event

MODEL = "counting"


class CountingEngine:
    def __init__(
        self,
        *,
        slots: int = 0,
        chunk_delay_s: float = 0.0,
        log: TextIO | None = None,
        name: str = "",
        model: str = MODEL,
    ) -> None:
        self.model = model  # the base model it serves (`counting`)
        self.behaviour: dict[str, Any] = {"chunk_delay_s": chunk_delay_s} if chunk_delay_s else {}
        self.executed: Counter[str] = Counter()
        self.traceparents: dict[str, str] = {}  # the W3C trace context each request came with
        self.received = 0
        self.stalled = 0
        self._answers = 0
        self._slots = asyncio.Semaphore(slots) if slots else None
        self._log = log
        self._name = name
        self.adapters: list[str] = []  # listed as LoRA adapters of the model (each answers as it)
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/models", self.models),
                Route("/health", self.health),
                Route("/metrics", self.metrics),
                Route("/control", self.control, methods=["POST"]),
                Route("/executions", self.executions),
            ]
        )

    async def chat(self, request: Request) -> Response:
        self.received += 1
        body = await request.json()
        b = self.behaviour
        if b.get("fail_times", 0) > 0:
            b["fail_times"] -= 1
            headers = {"retry-after": str(b["retry_after"])} if b.get("retry_after") is not None else {}
            code = b.get("fail_code")
            error = {"error": {"message": "told to fail", "type": "server_error", "param": None, "code": code}}
            return JSONResponse(error, status_code=int(b.get("fail_status", 503)), headers=headers)
        if b.get("stall_s"):
            self.stalled += 1
            try:
                await asyncio.sleep(float(b["stall_s"]))
            finally:
                self.stalled -= 1
        if self._slots is not None:
            await self._slots.acquire()
        request_id = request.headers.get("x-request-id", "-")
        self.executed[request_id] += 1
        if "traceparent" in request.headers:
            self.traceparents[request_id] = request.headers["traceparent"]
        if self._log is not None:
            self._log.write(f"{self._name} {request_id}\n")
            self._log.flush()
        chunks, delay = int(body.get("max_tokens") or b.get("chunks", 4)), float(b.get("chunk_delay_s", 0.0))
        if not body.get("stream"):
            try:
                await asyncio.sleep(delay * chunks)
            finally:
                self._free()
            return JSONResponse(_completion(chunks, self._answer_id(), self.model))
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        stream = _stream(chunks, delay, self._free, usage, self._answer_id(), self.model)
        return StreamingResponse(stream, media_type="text/event-stream")

    def _answer_id(self) -> str:
        """Unique per execution, so a test can tell one execution's answer from another's."""
        self._answers += 1
        return f"chatcmpl-counting-{self._name}-{self._answers}"

    def _free(self) -> None:
        if self._slots is not None:
            self._slots.release()

    async def models(self, _: Request) -> Response:
        adapters = [{"id": name, "object": "model", "parent": self.model} for name in self.adapters]
        return JSONResponse({"object": "list", "data": [{"id": self.model, "object": "model"}, *adapters]})

    async def health(self, _: Request) -> Response:
        return Response()

    async def metrics(self, _: Request) -> Response:
        return Response("", media_type="text/plain")

    def behave(self, **behaviour: Any) -> None:
        """New behaviour, and the counts start again from zero."""
        self.behaviour = behaviour
        self.executed.clear()
        self.traceparents.clear()
        self.received = 0

    async def control(self, request: Request) -> Response:
        self.behave(**await request.json())
        return JSONResponse(self.behaviour)

    async def executions(self, _: Request) -> Response:
        return JSONResponse(
            {
                "received": self.received,
                "total": sum(self.executed.values()),
                "by_id": self.executed,
                "traceparents": self.traceparents,
            }
        )


def _completion(chunks: int, answer_id: str, model: str) -> dict[str, Any]:
    return {
        "id": answer_id,
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "tok " * chunks}, "finish_reason": "length"}
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": chunks, "total_tokens": 1 + chunks},
    }


async def _stream(chunks: int, delay: float, done: Callable[[], None], usage: bool, answer_id: str, model: str) -> Any:
    try:
        chunk = {"id": answer_id, "object": "chat.completion.chunk", "model": model}
        for i in range(chunks):
            if delay:
                await asyncio.sleep(delay)
            last = i == chunks - 1
            choice = {"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": "length" if last else None}
            yield sse_event({**chunk, "choices": [choice]})
        if usage:  # as OpenAI sends it: a last chunk with no choices
            counts = {"prompt_tokens": 1, "completion_tokens": chunks, "total_tokens": chunks + 1}
            yield sse_event({**chunk, "choices": [], "usage": counts})
        yield DONE_EVENT
    finally:
        done()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1", help="any loopback address: replicas of one port")
    parser.add_argument("--slots", type=int, default=0, help="requests executed at once (0: no limit)")
    parser.add_argument("--chunk-delay-s", type=float, default=0.0)
    parser.add_argument("--log", type=Path, help="append a line per execution to this file")
    args = parser.parse_args()
    log = args.log.open("a") if args.log else None
    engine = CountingEngine(slots=args.slots, chunk_delay_s=args.chunk_delay_s, log=log, name=str(args.port))
    uvicorn.run(engine.app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
