"""The built-in issuer's endpoints: the token endpoint, the console's authorization endpoint
(its login page), its JWKS and its metadata (RFC 8414).

They exist when `auth_mode` is `builtin`; otherwise 404.
"""

import asyncio
import math
import time
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from app.api.deps import gateway_of
from app.auth.authorize import AuthorizationRequest, PageError, RedirectError
from app.auth.issuer import Issuer
from app.auth.login_page import login_page, page_headers
from app.auth.throttle import Throttle
from app.errors import NotFound

__all__ = ["router"]

router = APIRouter()

_MAX_FORM_BYTES = 4096
_MAX_SIGN_IN_BYTES = 16 * 1024  # the login form carries the sign-in's state, percent-encoded
_NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}
_throttle = Throttle(rate_per_s=5.0, burst=20)  # per client address: secrets are not for guessing
# Passwords, per client address: slow guessing. Not per user name: that would let anyone lock
# a person out by guessing wrong in their name.
_sign_ins = Throttle(rate_per_s=1.0, burst=10)


def _issuer(request: Request) -> Issuer:
    issuer = gateway_of(request).issuer
    if issuer is None:
        raise NotFound("This gateway does not issue tokens (auth_mode is not builtin).")
    return issuer


def _oauth_error(status: int, error: str, description: str, **headers: str) -> JSONResponse:
    """RFC 6749 §5.2: the token endpoint's errors are OAuth2's, not the OpenAI envelope."""
    return JSONResponse({"error": error, "error_description": description}, status, headers=_NO_STORE | headers)


class _BadForm(Exception):
    """A body that is not a small, well-formed form with each parameter once."""


async def _form(request: Request, limit: int = _MAX_FORM_BYTES) -> dict[str, str]:
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
        raise _BadForm("The body must be application/x-www-form-urlencoded.")
    body = bytearray()
    async for chunk in request.stream():  # read no further than the limit
        body += chunk
        if len(body) > limit:
            raise _BadForm("The request body is too large.")
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=bool(body), errors="strict")
    except ValueError:  # UnicodeDecodeError included
        raise _BadForm("The body is not a valid form.") from None
    return _once(pairs)


def _once(pairs: list[tuple[str, str]]) -> dict[str, str]:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise _BadForm("A parameter is repeated.")
    return dict(pairs)


def _client_address(request: Request) -> str:
    return request.client.host if request.client else ""


@router.post("/oauth/token")
async def token(request: Request) -> JSONResponse:
    issuer = _issuer(request)
    wait = _throttle.wait_s(_client_address(request), time.monotonic())
    if wait:
        return _oauth_error(429, "slow_down", "Too many token requests.", **{"retry-after": str(math.ceil(wait))})
    authorization = request.headers.getlist("authorization")
    if len(authorization) > 1:
        return _oauth_error(400, "invalid_request", "The request has more than one Authorization header.")
    try:
        form = await _form(request)
    except _BadForm as exc:
        return _oauth_error(400, "invalid_request", str(exc))
    if form.get("grant_type") == "authorization_code":
        status, payload, extra = await issuer.exchange_code(form, authorized=bool(authorization))
        return JSONResponse(payload, status, headers=_NO_STORE | extra)
    # scrypt checks the secret: tens of milliseconds, off the event loop. The path, not
    # request.url: that is rebuilt from the Host header, which may not parse.
    path = request.scope["path"]
    status, payload, headers = await asyncio.to_thread(issuer.token, path, request.headers, form)
    return JSONResponse(payload, status, headers=dict(headers))


def _page(request: AuthorizationRequest | None, status: int, *, error: str = "", username: str = "") -> HTMLResponse:
    page, nonce = login_page(request, error=error, username=username)
    return HTMLResponse(page, status, headers=page_headers(nonce))


@router.get("/oauth/authorize", include_in_schema=False)
async def authorize(request: Request) -> Response:
    """The login page for a console's sign-in (RFC 6749 §4.1.1)."""
    authorizer = _issuer(request).authorizer
    try:
        asked = authorizer.request(_once(request.query_params.multi_items()), request.headers.get("host", ""))
    except (_BadForm, PageError) as exc:
        return _page(None, 400, error=str(exc))
    except RedirectError as exc:
        return RedirectResponse(exc.location, 303, headers=_NO_STORE)
    return _page(asked, 200)


@router.post("/oauth/authorize", include_in_schema=False)
async def sign_in(request: Request) -> Response:
    """The login form's answer: back to the console with a code, or the form again."""
    authorizer = _issuer(request).authorizer
    try:
        form = await _form(request, _MAX_SIGN_IN_BYTES)
        asked = authorizer.request(form, request.headers.get("host", ""))
    except (_BadForm, PageError) as exc:
        return _page(None, 400, error=str(exc))
    except RedirectError as exc:
        return RedirectResponse(exc.location, 303, headers=_NO_STORE)
    username, password = form.get("username", ""), form.get("password", "")
    wait = _sign_ins.wait_s(_client_address(request), time.monotonic())
    if wait:
        response = _page(asked, 429, error=f"Too many attempts: try again in {math.ceil(wait)} s.", username=username)
        response.headers["retry-after"] = str(math.ceil(wait))
        return response
    user = await asyncio.to_thread(authorizer.sign_in, username, password)  # scrypt: off the event loop
    if user is None:
        return _page(asked, 401, error="The user name or password is wrong.", username=username)
    try:
        location = await authorizer.grant(asked, user)
    except RedirectError as exc:
        location = exc.location
    return RedirectResponse(location, 303, headers=_NO_STORE)


@router.get("/.well-known/jwks.json")
async def jwks(request: Request) -> JSONResponse:
    return JSONResponse(_issuer(request).signing.public_jwks(), headers={"cache-control": "public, max-age=60"})


@router.get("/.well-known/oauth-authorization-server")
async def metadata(request: Request) -> dict[str, Any]:
    issuer = _issuer(request)
    return issuer.metadata(issuer.issuer)
