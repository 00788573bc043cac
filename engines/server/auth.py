"""The engine's API key: with one configured, every route but the probes needs `Authorization: Bearer <key>`.

The engines are the internal plane: only the gateway (per pool) and the sync
sidecar (loading adapters) call them, so the key keeps anyone else who reaches the
port from generating or swapping adapters. `/health` and `/metrics` stay open for
probes and Prometheus, as vLLM's `--api-key` leaves everything outside `/v1` open;
here every other route is guarded, so a route added later is guarded by default.
"""

import hmac

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from protocol import error_payload

__all__ = ["OPEN_PATHS", "ApiKeyGuard"]

OPEN_PATHS = frozenset({"/health", "/metrics"})


class ApiKeyGuard:
    """ASGI middleware: 401 in the OpenAI envelope unless the request carries the key."""

    def __init__(self, app: ASGIApp, *, api_key: str) -> None:
        if not api_key:
            raise ValueError("an empty API key would let anyone in")
        self.app = app
        self._key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        response = JSONResponse(
            error_payload(
                "Incorrect or missing API key: send `Authorization: Bearer <key>`.",
                "invalid_request_error",
                code="invalid_api_key",
            ),
            status_code=401,
            headers={"www-authenticate": "Bearer"},
        )
        await response(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        given = [value for name, value in scope["headers"] if name == b"authorization"]
        if len(given) != 1:  # two credentials are ambiguous: refuse rather than pick one
            return False
        scheme, _, token = given[0].partition(b" ")
        # Constant-time: the comparison must not tell an attacker how much of a guess was right.
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._key)
