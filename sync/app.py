"""The sidecar's HTTP API: adapters for operators, `/sync/*` and `/blobs/*` for peers.

Writes need an operator's token, peer routes the peer key (sync/auth.py). Errors use the
OpenAI envelope like the gateway's: 400 for an adapter the engines must not see (with the
reason), 401/403 for a missing credential or scope, 403 for publishing at an edge site, 404
for an unknown name, version or blob, 409 for a peer whose clock is too far ahead, 413 for
a message or upload over the limit.
"""

import asyncio
import json
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

from protocol import error_payload
from protocol.background import running
from sync import crdt
from sync.adapters import AdapterRefused
from sync.auth import Refused, SidecarAuth
from sync.clock import ClockSkew
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
    weight: float = Field(default=1.0, gt=0, le=100)
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


def _error(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse(error_payload(message, kind, param=param, code=code), status_code=status)


async def _json_body(request: Request, limit: int) -> Any:
    body = await request.body()
    if len(body) > limit:
        raise _TooLarge(len(body), limit)
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"the body is not JSON: {exc}") from exc


async def _receive_file(request: Request, path: Path, limit: int) -> Path:
    """The request's body into `path`, streamed; _TooLarge past `limit` bytes."""
    size = 0
    with path.open("wb") as file:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _TooLarge(size, limit)
            file.write(chunk)
    return path


class _TooLarge(Exception):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"the body is {size} bytes, over the limit of {limit}")


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

    @app.exception_handler(Refused)
    async def refused(_: Request, exc: Refused) -> JSONResponse:
        return exc.response()

    @app.exception_handler(_TooLarge)
    async def too_large(_: Request, exc: _TooLarge) -> JSONResponse:
        return _error(413, str(exc), "request_too_large")

    @app.exception_handler(ValueError)
    async def malformed(_: Request, exc: ValueError) -> JSONResponse:
        return _error(400, str(exc), "invalid_request")

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
                    fields["weight"] = float(fields["weight"])
            else:
                fields = await _json_body(request, 64 * 1024)
            body = PublishRequest.model_validate(fields)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(p) for p in first["loc"]) or None
            return _error(400, f"{param}: {first['msg']}", "invalid_request", param)
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
        delta = crdt.decode(await _json_body(request, settings.max_message_bytes))
        try:
            node.receive(delta)
        except ClockSkew as exc:
            return _error(409, str(exc), "clock_skew")
        return JSONResponse({"status": "ok"})

    @app.post("/sync/summary", dependencies=peer)
    async def exchange(request: Request) -> JSONResponse:
        body = await _json_body(request, settings.max_message_bytes)
        theirs = body.get("summary") if isinstance(body, dict) else None
        if not isinstance(theirs, dict):
            raise ValueError("expected {'region': ..., 'summary': {name: digest}}")
        delta = node.differing(theirs)
        return JSONResponse({"delta": crdt.encode(delta), "summary": node.summary()})

    @app.get("/blobs/{digest}", dependencies=peer)
    async def blob(digest: str) -> Response:
        try:
            present = node.blobs.has(digest)
        except ValueError as exc:
            return _error(400, str(exc), "invalid_digest", "digest")
        if not present:
            return _error(404, f"No blob {digest[:12]} here.", "blob_not_found", "digest")
        return FileResponse(node.blobs.path(digest), media_type="application/octet-stream")

    return app
