"""The OpenAI completion routes: chat and text completions, one handler for both.

They are plain Starlette routes: FastAPI's per-request machinery (dependency solving, its exit
stack) cost them 15 % of their throughput (docs/benchmarks.md), and they parse and validate
their own bodies anyway. Once valid, a request becomes a `Call` and goes down the pipeline.
"""

from collections.abc import Awaitable, Callable

from fastapi import Request
from fastapi.responses import Response
from starlette.routing import Route

from app.api.body import parse_body, read_json_body
from app.api.deps import gateway_of
from app.api.keys import routing_key_of
from app.context import context_of
from app.reliability.limits import estimate_tokens
from protocol import ChatCompletionRequest, CompletionRequest

__all__ = ["completion_routes"]


def _endpoint(
    path: str, wire: type[ChatCompletionRequest] | type[CompletionRequest]
) -> Callable[[Request], Awaitable[Response]]:
    async def complete(request: Request) -> Response:
        gateway = gateway_of(request)
        principal = await gateway.guard.check(request.headers, "chat", context_of(request.scope))
        body = await read_json_body(request, gateway.settings.max_body_bytes)
        parsed = parse_body(body, wire)
        key = routing_key_of(request.headers, parsed)
        tokens = estimate_tokens(body, parsed.token_limit())
        gateway.check_model(principal, parsed.model)
        call = gateway.call(
            request, principal, path, body, parsed, path=path, body=body, routing_key=key, tokens=tokens
        )
        return await gateway.completions(call)

    return complete


completion_routes = [
    Route(path, _endpoint(path, wire), methods=["POST"])
    for path, wire in (("/v1/chat/completions", ChatCompletionRequest), ("/v1/completions", CompletionRequest))
]
