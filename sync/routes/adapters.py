"""Operators' routes: the adapters and their audit logs (open to read), and publishing,
uploading, withdrawing this region's part, retiring and revoking (a token with a write scope)."""

import asyncio
import tempfile
from functools import partial
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from protocol import describe_validation_error
from sync import crdt
from sync.adapters import AdapterRefused
from sync.body import integer, json_body, number, receive_file
from sync.crdt import Version
from sync.deps import WRITER, NodeDep, ReconcilerDep, SettingsDep
from sync.errors import BadRequest, Conflict, Forbidden, NotFound
from sync.node import ContributionChanged, EdgeCannotPublish, SyncNode
from sync.reconcile import STAGING_SEPARATOR, Reconciler
from sync.settings import SyncSettings
from sync.uploads import unpack_adapter

__all__ = ["router"]

ADAPTER_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
UPLOAD_TYPES = ("application/x-tar", "application/gzip", "application/x-gzip")

router = APIRouter()


class PublishRequest(BaseModel):
    """A local adapter folder to publish under `name`, this region's part with `weight`;
    `base_model` names what it was trained on when its config says otherwise."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(pattern=ADAPTER_NAME)
    path: str = Field(min_length=1)
    weight: float = Field(default=1.0, gt=0, le=crdt.MAX_WEIGHT)
    base_model: str | None = None
    replaces: int | None = Field(default=None, ge=0)  # only while this region's part is at this sequence

    @field_validator("name", mode="before")
    @classmethod
    def _not_a_staging_name(cls, name: object) -> object:
        if isinstance(name, str) and STAGING_SEPARATOR in name:
            raise ValueError(
                f"{STAGING_SEPARATOR!r} is reserved: `name{STAGING_SEPARATOR}<digest>` is how the engines hold a "
                "stack while its name moves to it"
            )
        return name


def _edge(exc: EdgeCannotPublish) -> Forbidden:
    return Forbidden(str(exc), code="edge_cannot_publish")


@router.get("/adapters")
async def list_adapters(node: NodeDep, reconciler: ReconcilerDep, settings: SettingsDep) -> dict[str, Any]:
    adapters = [adapter | reconciler.describe(adapter["name"]) for adapter in node.describe()]
    return {"region": settings.region, "adapters": adapters}


@router.post("/adapters", status_code=201, dependencies=[WRITER])
async def publish(request: Request, node: NodeDep, reconciler: ReconcilerDep, settings: SettingsDep) -> JSONResponse:
    """A folder on this host (JSON `{"name", "path", "weight", "base_model"}`), or an
    upload: a tar archive of the adapter's files, with `?name=...&weight=...`."""
    uploaded = request.headers.get("content-type", "").split(";")[0] in UPLOAD_TYPES
    body = await _publish_request(request, uploaded)
    spellings = _spellings(body.name, settings, reconciler)
    try:
        version = await _version(request, body, node, spellings, uploaded=uploaded)
        seq = node.publish(body.name, version, weight=body.weight, replaces=body.replaces)
    except EdgeCannotPublish as exc:
        raise _edge(exc) from None
    except AdapterRefused as exc:
        raise BadRequest(f"{body.path} is refused: {exc}", code="adapter_refused", param="path") from None
    except ContributionChanged as exc:
        raise Conflict(str(exc), code="contribution_changed", param="replaces") from None
    described = next(a for a in node.describe() if a["name"] == body.name)
    return JSONResponse({**described, "published": version.digest, "seq": seq}, status_code=201)


async def _publish_request(request: Request, uploaded: bool) -> PublishRequest:
    """What to publish: from the query of an upload, or from the JSON body."""
    if uploaded:
        fields: Any = dict(request.query_params) | {"path": "(upload)"}
        if "weight" in fields:
            fields["weight"] = number(fields["weight"], "weight")
        if "replaces" in fields:
            fields["replaces"] = integer(fields["replaces"], "replaces")
    else:
        fields = await json_body(request, 64 * 1024)
    try:
        return PublishRequest.model_validate(fields)
    except ValidationError as exc:
        message, param = describe_validation_error(exc)
        raise BadRequest(message, param=param) from None


def _spellings(name: str, settings: SyncSettings, reconciler: Reconciler) -> list[str]:
    """The engines' folders of this region's base models: an adapter trained from the folder
    records its path. BadRequest for a name that is a base model's: it would never load."""
    engine_bases = reconciler.base_models()
    if name in settings.base_models or name in engine_bases:
        message = f"name: {name!r} is a base model's name; an adapter published under it would never load"
        raise BadRequest(message, code="name_reserved", param="name")
    return [root for base, root in engine_bases.items() if base in settings.base_models]


async def _version(
    request: Request, body: PublishRequest, node: SyncNode, spellings: list[str], *, uploaded: bool
) -> Version:
    """The adapter checked and its files stored (off the event loop); AdapterRefused if it is unfit."""
    check = partial(node.check, at=node.clock.now(), base_model=body.base_model, spellings=spellings)
    if not uploaded:
        return await asyncio.to_thread(check, Path(body.path))
    settings = node.settings
    with tempfile.TemporaryDirectory(prefix="upload-", dir=settings.state.parent) as work:
        archive = await receive_file(request, Path(work) / "adapter.tar", settings.max_upload_bytes)
        folder = await asyncio.to_thread(unpack_adapter, archive, Path(work) / "adapter")
        return await asyncio.to_thread(check, folder)


@router.get("/adapters/{name}/audit")
async def audit(name: str, node: NodeDep) -> JSONResponse:
    """What happened to `name`, in hybrid-logical-clock order."""
    events = crdt.audit(node.state, name)
    if not events:
        raise NotFound(f"No adapter named {name!r} is known here.", code="adapter_not_found", param="name")
    rows = [{"at": at.encode(), "event": event} for at, event in events]
    return JSONResponse({"name": name, "events": rows})


@router.delete("/adapters/{name}/versions/{digest}", dependencies=[WRITER])
async def revoke(name: str, digest: str, node: NodeDep) -> JSONResponse:
    """Never serve this version again, in any region's contribution."""
    try:
        node.revoke(name, digest)
    except EdgeCannotPublish as exc:
        raise _edge(exc) from None
    except crdt.Unknown:
        raise NotFound(f"{name!r} has no version {digest[:64]!r}.", code="version_not_found", param="digest") from None
    return JSONResponse({"name": name, "version": digest, "status": "revoked"})


@router.delete("/adapters/{name}/contribution", dependencies=[WRITER])
async def withdraw(name: str, node: NodeDep, seq: Annotated[int | None, Query(ge=0)] = None) -> JSONResponse:
    """This region stops contributing to `name`; the other regions' parts stay served. With
    `seq`, only while this region's part is at that sequence (409 once it moved on)."""
    try:
        node.withdraw(name, seq)
    except EdgeCannotPublish as exc:
        raise _edge(exc) from None
    except crdt.Unknown:
        message = f"This region serves no part of {name[:200]!r}."
        raise NotFound(message, code="contribution_not_found", param="name") from None
    except ContributionChanged as exc:
        raise Conflict(str(exc)[:300], code="contribution_changed", param="seq") from None
    return JSONResponse({"name": name, "region": node.region, "status": "withdrawn", "seq": node.sequence(name)})


@router.delete("/adapters/{name}", dependencies=[WRITER])
async def retire(name: str, node: NodeDep) -> JSONResponse:
    try:
        node.retire(name)
    except EdgeCannotPublish as exc:
        raise _edge(exc) from None
    except crdt.Unknown:
        raise NotFound(f"No adapter named {name!r} is published.", code="adapter_not_found", param="name") from None
    return JSONResponse({"name": name, "status": "retired"})
