"""Routes for the other regions' sidecars (the peer key): deltas, anti-entropy digests, blobs."""

import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.types import Receive, Scope, Send

from sync import crdt
from sync.blobs import InvalidDigest
from sync.body import json_body
from sync.clock import ClockSkew
from sync.deps import PEER, NodeDep, SettingsDep
from sync.errors import BadRequest, Conflict, NotFound, RangeNotSatisfiable

__all__ = ["router"]

router = APIRouter(dependencies=[PEER])


def _delta(body: Any) -> crdt.State:
    try:
        return crdt.decode(body)
    except crdt.Malformed as exc:
        raise BadRequest(str(exc)) from None


@router.post("/sync/delta")
async def receive_delta(request: Request, node: NodeDep, settings: SettingsDep) -> JSONResponse:
    delta = _delta(await json_body(request, settings.max_message_bytes))
    try:
        node.receive(delta)
    except ClockSkew as exc:
        raise Conflict(str(exc), code="clock_skew") from None
    return JSONResponse({"status": "ok"})


@router.post("/sync/summary")
async def exchange(request: Request, node: NodeDep, settings: SettingsDep) -> JSONResponse:
    body = await json_body(request, settings.max_message_bytes)
    theirs = body.get("summary") if isinstance(body, dict) else None
    if not isinstance(theirs, dict) or not all(isinstance(digest, str) for digest in theirs.values()):
        raise BadRequest("expected {'region': ..., 'summary': {bucket: digest}}", param="summary")
    delta = node.differing(theirs)
    return JSONResponse({"delta": crdt.encode(delta), "summary": node.summary()})


@router.get("/blobs/{digest}")
async def blob(digest: str, request: Request, node: NodeDep) -> Response:
    try:
        path = node.blobs.path(digest)
    except InvalidDigest as exc:
        raise BadRequest(str(exc), code="invalid_digest", param="digest") from None
    if not path.is_file():
        raise NotFound(f"No blob {digest[:12]} here.", code="blob_not_found", param="digest")
    return _blob_response(path, request.headers.get("range"))


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
        raise RangeNotSatisfiable(message, param="Range", headers={"content-range": f"bytes */{size}"})
    return _Blob(path, whole=False)
