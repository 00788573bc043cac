"""The engines' API key: with one configured, every route but the probes needs `Authorization: Bearer <key>`.

The engines are the internal plane: only the gateway (per pool) and the sync
sidecar (loading adapters) call them, so the key keeps anyone else who reaches the
port from generating or swapping adapters. `/health` and `/metrics` stay open for
probes and Prometheus; every other path is guarded, so a route added later (ours, or
one of vLLM's outside `/v1`) is guarded by default.

One guard serves both engines: ours adds it in `engines.server.api`, and vLLM loads it
with `--middleware` (`engines.vllm.guard`). vLLM's environment does not hold this
project's dependencies, so this module imports the standard library and starlette only.
"""

import hmac
from typing import Protocol, TypeVar

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocketClose

__all__ = ["MIN_API_KEY_LENGTH", "OPEN_PATHS", "ApiKeyGuard", "check_api_key", "checked_setting"]

OPEN_PATHS = frozenset({"/health", "/metrics"})

# An empty key once meant "no guard" without a word; a short one is guessable. Refuse both.
MIN_API_KEY_LENGTH = 16

# The OpenAI envelope, written out here: `protocol` (pydantic) is not importable inside vLLM.
_REFUSAL = {
    "error": {
        "message": "Incorrect or missing API key: send `Authorization: Bearer <key>`.",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
}

# RFC 6455's "policy violation": before the handshake is accepted, uvicorn answers it with 403.
_WS_POLICY_VIOLATION = 1008


def check_api_key(api_key: str) -> None:
    """Raise ValueError for a key too short to guard anything."""
    if len(api_key) < MIN_API_KEY_LENGTH:
        raise ValueError(
            f"an engine API key needs at least {MIN_API_KEY_LENGTH} characters (this one has {len(api_key)}; "
            "an empty one would leave the engine open): make one with `openssl rand -base64 32`, or unset it"
        )


class _Secret(Protocol):
    def get_secret_value(self) -> str: ...


S = TypeVar("S", bound=_Secret)


def checked_setting(key: S | None, sources: str) -> S | None:
    """A settings validator's check of an API key: None is no key, an empty one a mistake."""
    if key is not None:
        try:
            check_api_key(key.get_secret_value())
        except ValueError as exc:
            raise ValueError(f"{exc} (read from {sources})") from None
    return key


class ApiKeyGuard:
    """ASGI middleware: 401 in the OpenAI envelope unless the request carries the key."""

    def __init__(self, app: ASGIApp, *, api_key: str) -> None:
        check_api_key(api_key)
        self.app = app
        self._key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Everything but lifespan is checked: a websocket route (vLLM has some) is no exception.
        if scope["type"] == "lifespan" or scope["path"] in OPEN_PATHS or self._allowed(scope):
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await WebSocketClose(code=_WS_POLICY_VIOLATION)(scope, receive, send)
        else:
            response = JSONResponse(_REFUSAL, status_code=401, headers={"www-authenticate": "Bearer"})
            await response(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        given = [value for name, value in scope["headers"] if name == b"authorization"]
        if len(given) != 1:  # two credentials are ambiguous: refuse rather than pick one
            return False
        scheme, _, token = given[0].partition(b" ")
        # Constant-time: the comparison must not tell an attacker how much of a guess was right.
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._key)
