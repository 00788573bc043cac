"""The web console at /console: the built app (console/dist, `make console`) as static files,
and its settings (`/console/config.json`: the region, and how to sign in).

Assets have content-hashed names and are cached for good; every other path under /console
answers the app's page (it routes in the browser), never cached, under a Content-Security-
Policy that admits this origin's scripts and styles only. Without a build, /console says in
one line how to make one; the API is served either way.
"""

import asyncio
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response

from app.auth.issuer import SCOPES
from app.errors import IssuerUnavailable
from app.settings import LOOPBACK_HOSTS, GatewaySettings

__all__ = ["DIST", "NOT_BUILT", "ConsoleSite", "router"]

DIST = Path(__file__).resolve().parents[2] / "console" / "dist"  # `make console` builds it here

NOT_BUILT = "The console is not built: run `make console` (it needs Node.js 18 or later and npm), then reload.\n"
_ASSET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}")
_METADATA_TTL_S = 300.0
_METADATA_RETRY_S = 30.0
_SIGN_IN_ENDPOINTS = ("authorization_endpoint", "token_endpoint")
_ASSET_HEADERS = {"cache-control": "public, max-age=31536000, immutable", "x-content-type-options": "nosniff"}

router = APIRouter(include_in_schema=False)


@dataclass
class ConsoleSite:
    """What the console's routes read: where its build is, and how its users sign in."""

    directory: Path
    region: str
    auth_mode: Literal["builtin", "external", "disabled"]
    issuer: str
    client_id: str
    sync: bool  # /sync/adapters relays to a sidecar
    _metadata: tuple[float, dict[str, str]] | None = field(default=None, repr=False)  # the external issuer's
    _failed_at: float = field(default=-math.inf, repr=False)  # its last failed read
    _failure: str = field(default="", repr=False)
    _reading: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @classmethod
    def of(cls, settings: GatewaySettings) -> "ConsoleSite":
        directory = settings.console_dir or DIST
        return cls(directory, settings.region, settings.auth_mode, settings.issuer, settings.console_client_id,
                   settings.sync_url is not None)  # fmt: skip


def _site(request: Request) -> ConsoleSite:
    site: ConsoleSite = request.app.state.console
    return site


def _page_headers(connect: str = "") -> dict[str, str]:
    policy = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self'{connect}; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
    return {
        "content-security-policy": policy,
        "x-frame-options": "DENY",
        "cache-control": "no-cache",
        "referrer-policy": "no-referrer",
        "x-content-type-options": "nosniff",
    }


@router.get("/console")
async def console_root() -> RedirectResponse:
    return RedirectResponse("/console/", 308)


@router.get("/console/config.json")
async def console_config(request: Request) -> JSONResponse:
    site = _site(request)
    config = {"region": site.region, "auth": await _auth(site), "sync": site.sync}
    return JSONResponse(config, headers={"cache-control": "no-store"})


async def _auth(site: ConsoleSite) -> dict[str, Any]:
    if site.auth_mode == "disabled":
        return {"mode": "disabled"}
    endpoints = {"authorization_endpoint": "/oauth/authorize", "token_endpoint": "/oauth/token"}
    if site.auth_mode == "external":
        endpoints = await _issuer_metadata(site)
    return {"mode": site.auth_mode, **endpoints, "client_id": site.client_id, "scopes": list(SCOPES)}


async def _issuer_metadata(site: ConsoleSite) -> dict[str, str]:
    """The external issuer's endpoints, from its RFC 8414 (or OpenID Connect) metadata: kept
    five minutes (the last good ones served on while a new read fails), one read at a time,
    and a failed read not tried again for 30 s (page loads need no token: none may make the
    gateway hammer the issuer)."""
    async with site._reading:
        now = time.monotonic()
        if site._metadata is not None and now - site._metadata[0] < _METADATA_TTL_S:
            return site._metadata[1]
        if now - site._failed_at < _METADATA_RETRY_S:
            if site._metadata is not None:
                return site._metadata[1]
            raise IssuerUnavailable(site._failure)
        try:
            endpoints = await _read_metadata(site.issuer)
        except IssuerUnavailable as exc:
            site._failed_at, site._failure = time.monotonic(), str(exc)
            if site._metadata is not None:
                return site._metadata[1]
            raise
        site._metadata = (time.monotonic(), endpoints)
        return endpoints


async def _read_metadata(issuer: str) -> dict[str, str]:
    """The sign-in endpoints from the first of the RFC 8414 and OpenID Connect documents that
    has both, and the logout endpoint from either (providers often name it in the OpenID
    one only)."""
    base = issuer.rstrip("/")
    urls = [f"{base}/.well-known/oauth-authorization-server", f"{base}/.well-known/openid-configuration"]
    endpoints: dict[str, str] = {}
    async with httpx.AsyncClient(timeout=5.0) as client:
        for url in urls:
            document = await _document(client, url)
            if not endpoints and all(_secure(document.get(k)) for k in _SIGN_IN_ENDPOINTS):
                endpoints = {k: document[k] for k in _SIGN_IN_ENDPOINTS}
            # OpenID Connect RP-initiated logout: signing out of the console ends the
            # provider's session too, so that "Sign in" asks for the password again.
            if endpoints and _secure(document.get("end_session_endpoint")):
                endpoints["end_session_endpoint"] = document["end_session_endpoint"]
                break
    if not endpoints:
        raise IssuerUnavailable(
            f"The issuer's metadata ({urls[0]}) gave no https (or loopback) authorization and token endpoints."
        )
    return endpoints


async def _document(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    try:
        answer = await client.get(url)
        document = answer.json() if answer.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def _secure(endpoint: object) -> bool:
    """https, or plain http on this machine (an issuer beside the gateway): codes and tokens
    never cross a network in clear. A plain URL only: no user part, backslash or white space,
    which browsers and Python's parser read differently (`http://evil\\@127.0.0.1/` is
    loopback to Python, evil to a browser)."""
    if not isinstance(endpoint, str) or any(c in "\\@" or c.isspace() or not c.isprintable() for c in endpoint):
        return False
    parts = urlsplit(endpoint)
    return parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS)


@router.get("/console/assets/{name}")
async def console_asset(name: str, request: Request) -> Response:
    path = _site(request).directory / "assets" / name
    if not _ASSET.fullmatch(name) or ".." in name or not path.is_file():
        return PlainTextResponse("Not found.\n", 404)
    return FileResponse(path, headers=_ASSET_HEADERS)


@router.get("/console/assets/{rest:path}")
async def console_no_asset(rest: str) -> Response:
    """Under assets/, anything that is not one of them (never the page in its place)."""
    return PlainTextResponse("Not found.\n", 404)


@router.get("/console/{route:path}")
async def console_page(route: str, request: Request) -> Response:
    """The app's page, for any of its routes (it routes in the browser)."""
    site = _site(request)
    page = site.directory / "index.html"
    if not page.is_file():
        return PlainTextResponse(NOT_BUILT, 404)
    connect = ""
    if site.auth_mode == "external":  # the console exchanges its code at the issuer's token endpoint
        try:
            token_endpoint = (await _issuer_metadata(site))["token_endpoint"]
            parts = urlsplit(token_endpoint)
            connect = f" {parts.scheme}://{parts.netloc}"
        except IssuerUnavailable:
            pass  # the page loads; its config says why sign-in is unavailable
    return FileResponse(page, headers=_page_headers(connect), media_type="text/html")
