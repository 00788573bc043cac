"""The sidecar's HTTP API: adapters for operators, `/sync/*` and `/blobs/*` for peers.

Writes need an operator's token, peer routes the peer key (sync/auth.py). Errors use the
OpenAI envelope like the gateway's (sync/errors.py): 400 for a malformed body or an adapter
the engines must not see (with the reason), 401/403 for a missing credential or scope, 403
for publishing at an edge site, 404 for an unknown name, version, blob or path, 405 for a
method a route does not take, 409 for a peer whose clock is too far ahead, 413 for a message
or upload over the limit, 416 for a range past a blob's end, and 500, logged, for a bug.
"""

import asyncio
import json
import re
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from starlette.types import Receive, Scope, Send

from protocol import describe_validation_error
from protocol.background import running
from sync import crdt
from sync.adapters import AdapterRefused
from sync.auth import SidecarAuth
from sync.clock import ClockSkew
from sync.errors import BadRequest, TooLarge, install_error_handlers
from sync.errors import error_response as _error
from sync.node import EdgeCannotPublish, SyncNode
from sync.peers import Peers
from sync.reconcile import STAGING_SEPARATOR, Reconciler
from sync.settings import SyncSettings
from sync.telemetry import SyncMetrics
from sync.uploads import unpack_adapter

__all__ = ["create_app"]

ADAPTER_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
UPLOAD_TYPES = ("application/x-tar", "application/gzip", "application/x-gzip")


class PublishRequest(BaseModel):
    """A local adapter folder to publish under `name`, this region's part with `weight`;
    `base_model` names what it was trained on when its config says otherwise."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(pattern=ADAPTER_NAME)
    path: str = Field(min_length=1)
    weight: float = Field(default=1.0, gt=0, le=crdt.MAX_WEIGHT)
    base_model: str | None = None

    @field_validator("name", mode="before")
    @classmethod
    def _not_a_staging_name(cls, name: object) -> object:
        if isinstance(name, str) and STAGING_SEPARATOR in name:
            raise ValueError(
                f"{STAGING_SEPARATOR!r} is reserved: `name{STAGING_SEPARATOR}<digest>` is how the engines hold a "
                "stack while its name moves to it"
            )
        return name


def _no_constant(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON number")


def _bounded_int(text: str) -> int:
    # Every integer here fits int64; longer ones would only be refused later, after Python had
    # converted all their digits.
    if len(text.lstrip("-")) > 19:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits")
    return int(text)


async def _json_body(request: Request, limit: int) -> Any:
    body = await request.body()
    if len(body) > limit:
        raise TooLarge(len(body), limit)
    try:
        return json.loads(body, parse_constant=_no_constant, parse_int=_bounded_int)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None
    except UnicodeDecodeError:
        raise BadRequest("the body is not JSON: not UTF-8") from None
    except RecursionError:
        raise BadRequest("the body is not JSON this sidecar reads: nested too deeply") from None
    except ValueError as exc:
        raise BadRequest(f"the body is not JSON this sidecar reads: {exc}") from None


async def _receive_file(request: Request, path: Path, limit: int) -> Path:
    """The request's body into `path`, streamed; _TooLarge past `limit` bytes."""
    size = 0
    with path.open("wb") as file:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise TooLarge(size, limit)
            file.write(chunk)
    return path


def _number(text: str, param: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise BadRequest(f"Invalid value for '{param}': {text[:64]!r} is not a number.", param=param) from None


# One range of bytes, as peers ask to resume a download (`bytes=N-`), is served; any other
# `Range` is ignored and the whole blob sent, as RFC 9110 §14.2 allows (Starlette would answer
# a malformed one in plain text).
_RANGE = re.compile(r"bytes=(\d{1,19})-(\d{0,19})")


class _Blob(FileResponse):
    def __init__(self, path: Path, *, whole: bool) -> None:
        super().__init__(path, media_type="application/octet-stream")
        self.whole = whole

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.whole:
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k != b"range"]}
        await super().__call__(scope, receive, send)


def _blob_response(path: Path, wanted: str | None) -> Response:
    """The blob at `path`, or the part of it `wanted` names; 416 for a range past its end."""
    match = _RANGE.fullmatch(wanted.strip()) if wanted is not None else None
    end = int(match[2]) if match and match[2] else None
    if match is None or (end is not None and end < int(match[1])):
        return _Blob(path, whole=True)
    size = path.stat().st_size
    if int(match[1]) >= size:
        message = f"Range: byte {match[1]} is past the blob's {size} bytes."
        return _error(416, message, "range_not_satisfiable", "Range", headers={"content-range": f"bytes */{size}"})
    return _Blob(path, whole=False)


def _bearer(secret: SecretStr | None) -> dict[str, str]:
    return {"authorization": f"Bearer {secret.get_secret_value()}"} if secret else {}


def create_app(settings: SyncSettings) -> FastAPI:
    node = SyncNode(settings)
    metrics = SyncMetrics()
    auth = SidecarAuth(settings)
    writer = [Depends(auth.writer)]
    peer = [Depends(auth.peer)]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One client per plane, each with its own credential: the peer key never reaches an
        # engine, nor the engines' key a peer.
        timeout = settings.peer_timeout_s
        async with (
            httpx.AsyncClient(timeout=timeout, headers=_bearer(settings.peer_key)) as to_peers,
            httpx.AsyncClient(timeout=timeout, headers=_bearer(settings.engine_api_key)) as to_engines,
        ):
            peers = Peers(node, to_peers)
            reconciler = Reconciler(node, peers, to_engines)
            metrics.watch(node, peers, reconciler)
            app.state.peers, app.state.reconciler = peers, reconciler
            async with running(peers.run()), running(reconciler.run()):
                yield

    app = FastAPI(title="switchyard-sync", lifespan=lifespan)
    app.state.node = node
    install_error_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "region": settings.region, "role": settings.role}

    @app.get("/metrics", include_in_schema=False)
    async def metrics_text() -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/adapters")
    async def list_adapters() -> dict[str, Any]:
        reconciler: Reconciler = app.state.reconciler
        adapters = [adapter | reconciler.describe(adapter["name"]) for adapter in node.describe()]
        return {"region": settings.region, "adapters": adapters}

    @app.post("/adapters", status_code=201, dependencies=writer)
    async def publish(request: Request) -> JSONResponse:
        """A folder on this host (JSON `{"name", "path", "weight", "base_model"}`), or an
        upload: a tar archive of the adapter's files, with `?name=...&weight=...`."""
        uploaded = request.headers.get("content-type", "").split(";")[0] in UPLOAD_TYPES
        try:
            if uploaded:
                fields: Any = dict(request.query_params) | {"path": "(upload)"}
                if "weight" in fields:
                    fields["weight"] = _number(fields["weight"], "weight")
            else:
                fields = await _json_body(request, 64 * 1024)
            body = PublishRequest.model_validate(fields)
        except ValidationError as exc:
            message, param = describe_validation_error(exc)
            return _error(400, message, "invalid_request", param)
        reconciler: Reconciler = app.state.reconciler
        engine_bases = reconciler.base_models()
        if body.name in settings.base_models or body.name in engine_bases:
            message = f"name: {body.name!r} is a base model's name; an adapter published under it would never load"
            return _error(400, message, "name_reserved", "name")
        # The engines' model folders are other spellings of their base models: an adapter
        # trained from the folder records its path.
        spellings = [root for name, root in engine_bases.items() if name in settings.base_models]
        try:
            at = node.clock.now()  # hashing and storing the files runs off the event loop
            check = partial(node.check, at=at, base_model=body.base_model, spellings=spellings)
            if uploaded:
                with tempfile.TemporaryDirectory(prefix="upload-", dir=settings.state.parent) as work:
                    archive = await _receive_file(request, Path(work) / "adapter.tar", settings.max_upload_bytes)
                    folder = await asyncio.to_thread(unpack_adapter, archive, Path(work) / "adapter")
                    version = await asyncio.to_thread(check, folder)
            else:
                version = await asyncio.to_thread(check, Path(body.path))
            node.publish(body.name, version, weight=body.weight)
        except EdgeCannotPublish as exc:
            return _error(403, str(exc), "edge_cannot_publish")
        except AdapterRefused as exc:
            return _error(400, f"{body.path} is refused: {exc}", "adapter_refused", "path")
        described = next(a for a in node.describe() if a["name"] == body.name)
        return JSONResponse({**described, "published": version.digest}, status_code=201)

    @app.get("/adapters/{name}/audit")
    async def audit(name: str) -> JSONResponse:
        """What happened to `name`, in hybrid-logical-clock order."""
        events = crdt.audit(node.state, name)
        if not events:
            return _error(404, f"No adapter named {name!r} is known here.", "adapter_not_found", "name")
        rows = [{"at": at.encode(), "event": event} for at, event in events]
        return JSONResponse({"name": name, "events": rows})

    @app.delete("/adapters/{name}/versions/{digest}", dependencies=writer)
    async def revoke(name: str, digest: str) -> JSONResponse:
        """Never serve this version again, in any region's contribution."""
        try:
            node.revoke(name, digest)
        except EdgeCannotPublish as exc:
            return _error(403, str(exc), "edge_cannot_publish")
        except KeyError:
            return _error(404, f"{name!r} has no version {digest[:64]!r}.", "version_not_found", "digest")
        return JSONResponse({"name": name, "version": digest, "status": "revoked"})

    @app.delete("/adapters/{name}", dependencies=writer)
    async def retire(name: str) -> JSONResponse:
        try:
            node.retire(name)
        except EdgeCannotPublish as exc:
            return _error(403, str(exc), "edge_cannot_publish")
        except KeyError:
            return _error(404, f"No adapter named {name!r} is published.", "adapter_not_found", "name")
        return JSONResponse({"name": name, "status": "retired"})

    # --- peers ------------------------------------------------------------------------------------

    @app.post("/sync/delta", dependencies=peer)
    async def receive_delta(request: Request) -> JSONResponse:
        try:
            delta = crdt.decode(await _json_body(request, settings.max_message_bytes))
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        try:
            node.receive(delta)
        except ClockSkew as exc:
            return _error(409, str(exc), "clock_skew")
        return JSONResponse({"status": "ok"})

    @app.post("/sync/summary", dependencies=peer)
    async def exchange(request: Request) -> JSONResponse:
        body = await _json_body(request, settings.max_message_bytes)
        theirs = body.get("summary") if isinstance(body, dict) else None
        if not isinstance(theirs, dict) or not all(isinstance(digest, str) for digest in theirs.values()):
            raise BadRequest("expected {'region': ..., 'summary': {bucket: digest}}", param="summary")
        delta = node.differing(theirs)
        return JSONResponse({"delta": crdt.encode(delta), "summary": node.summary()})

    @app.get("/blobs/{digest}", dependencies=peer)
    async def blob(digest: str, request: Request) -> Response:
        try:
            present = node.blobs.has(digest)
        except ValueError as exc:
            return _error(400, str(exc), "invalid_digest", "digest")
        if not present:
            return _error(404, f"No blob {digest[:12]} here.", "blob_not_found", "digest")
        return _blob_response(node.blobs.path(digest), request.headers.get("range"))

    return app
