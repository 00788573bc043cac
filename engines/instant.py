"""A fake instant engine for benchmarks: canned OpenAI answers with no model and no framework.

`python -m engines.instant --port 8100` answers chat completions at once, as JSON
or as an SSE stream of `--chunks` events, so a benchmark measures only what sits
in front of it. A raw ASGI app: the engine's own overhead stays far below the
gateway's.
"""

import argparse
import json

import uvicorn
from starlette.types import Receive, Scope, Send

from protocol import DONE_EVENT, sse_event

__all__ = ["InstantEngine"]

MODEL = "instant"


class InstantEngine:
    def __init__(self, chunks: int = 16) -> None:
        created = 1700000000
        usage = {"prompt_tokens": 8, "completion_tokens": chunks, "total_tokens": 8 + chunks}
        self._json = json.dumps(
            {
                "id": "chatcmpl-instant",
                "object": "chat.completion",
                "created": created,
                "model": MODEL,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "tok " * chunks},
                        "finish_reason": "length",
                        "logprobs": None,
                    }
                ],
                "usage": usage,
            }
        ).encode()

        def chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            body = {"id": "chatcmpl-instant", "object": "chat.completion.chunk", "created": created, "model": MODEL}
            return sse_event(body | {"choices": [choice]})

        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": "tok "}) for _ in range(chunks)]
        events += [chunk({}, "length"), DONE_EVENT]
        self._events = events
        self._models = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        if path in ("/health", "/metrics"):
            await _respond(send, 200, b"text/plain", b"")
        elif path == "/v1/models":
            await _respond(send, 200, b"application/json", self._models)
        elif path == "/v1/chat/completions" and b'"stream":true' in body.replace(b" ", b""):
            headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for event in self._events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        elif path == "/v1/chat/completions":
            await _respond(send, 200, b"application/json", self._json)
        else:
            await _respond(send, 404, b"application/json", b'{"error": {"message": "not found"}}')


async def _respond(send: Send, status: int, content_type: bytes, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type)]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m engines.instant", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--chunks", type=int, default=16, help="content events per stream")
    args = parser.parse_args()
    uvicorn.run(
        InstantEngine(args.chunks), host=args.host, port=args.port, log_level="warning", access_log=False, loop="uvloop"
    )


if __name__ == "__main__":
    main()
