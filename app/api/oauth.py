"""The built-in issuer's endpoints: the token endpoint, its JWKS and its metadata (RFC 8414).

They exist when `auth_mode` is `builtin`; otherwise 404.
"""

import asyncio
import math
import time
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api.deps import gateway_of
from app.auth.issuer import Issuer
from app.auth.throttle import Throttle
from app.errors import NotFound

__all__ = ["router"]

router = APIRouter()

_MAX_FORM_BYTES = 4096
_NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}
_throttle = Throttle(rate_per_s=5.0, burst=20)  # per client address: secrets are not for guessing


def _issuer(request: Request) -> Issuer:
    issuer = gateway_of(request).issuer
    if issuer is None:
        raise NotFound("This gateway does not issue tokens (auth_mode is not builtin).")
    return issuer


def _oauth_error(status: int, error: str, description: str, **headers: str) -> JSONResponse:
    """RFC 6749 §5.2: the token endpoint's errors are OAuth2's, not the OpenAI envelope."""
    return JSONResponse({"error": error, "error_description": description}, status, headers=_NO_STORE | headers)


@router.post("/oauth/token")
async def token(request: Request) -> JSONResponse:
    issuer = _issuer(request)
    wait = _throttle.wait_s(request.client.host if request.client else "", time.monotonic())
    if wait:
        return _oauth_error(429, "slow_down", "Too many token requests.", **{"retry-after": str(math.ceil(wait))})
    if len(request.headers.getlist("authorization")) > 1:
        return _oauth_error(400, "invalid_request", "The request has more than one Authorization header.")
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        return _oauth_error(400, "invalid_request", "The body must be application/x-www-form-urlencoded.")
    body = bytearray()
    async for chunk in request.stream():  # read no further than the limit
        body += chunk
        if len(body) > _MAX_FORM_BYTES:
            return _oauth_error(400, "invalid_request", "The request body is too large.")
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=bool(body), errors="strict")
    except ValueError:  # UnicodeDecodeError included
        return _oauth_error(400, "invalid_request", "The body is not a valid form.")
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        return _oauth_error(400, "invalid_request", "A parameter is repeated.")
    # scrypt checks the secret: tens of milliseconds, off the event loop. The path, not
    # request.url: that is rebuilt from the Host header, which may not parse.
    path = request.scope["path"]
    status, payload, headers = await asyncio.to_thread(issuer.token, path, request.headers, dict(pairs))
    return JSONResponse(payload, status, headers=dict(headers))


@router.get("/.well-known/jwks.json")
async def jwks(request: Request) -> JSONResponse:
    return JSONResponse(_issuer(request).signing.public_jwks(), headers={"cache-control": "public, max-age=60"})


@router.get("/.well-known/oauth-authorization-server")
async def metadata(request: Request) -> dict[str, Any]:
    issuer = _issuer(request)
    return issuer.metadata(issuer.issuer)
