"""`/v1/files`: datasets for fine-tuning, as OpenAI's API has them (scope `finetune`).

An upload is streamed to disk through the file store as it arrives (app/api/multipart.py,
finetune/files.py) and checked line by line on the way: a bad dataset is refused with the
line and the reason, and nothing of it is kept. Each file belongs to the tenant that uploaded
it; another tenant's file is `404` like one that never was.
"""

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.requests import ClientDisconnect

from app.api.deps import GatewayDep, scoped, tenant_of
from app.api.multipart import read_form
from app.auth import Principal
from app.errors import InvalidRequest, NotFound, PayloadTooLarge, StorageLimitReached
from app.finetuning import database_errors
from finetune.datasets import DatasetError
from finetune.files import FILE_PURPOSES, FileTooLarge, OverShare, UnknownFile
from finetune.records import UnknownCursor
from finetune.schema import File
from protocol import FileDeleted, FileList, FileObject

__all__ = ["file_object", "router"]

router = APIRouter(dependencies=[Depends(database_errors)])
Caller = Annotated[Principal | None, scoped("finetune")]
_MULTIPART_OVERHEAD = 64 * 1024  # the form's fields and boundaries around the file


def file_object(record: File) -> FileObject:
    return FileObject(
        id=record.id, bytes=record.bytes, created_at=record.created_at, filename=record.filename, purpose=record.purpose
    )


@router.post("/v1/files")
async def upload(request: Request, gateway: GatewayDep, caller: Caller) -> JSONResponse:
    finetuning = gateway.finetuning
    await finetuning.ready()
    store = finetuning.files
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > store.max_bytes + _MULTIPART_OVERHEAD:
        raise _too_large(store.max_bytes)
    owner, quota = tenant_of(caller, None), gateway.settings.max_stored_bytes_per_tenant
    room = quota - await store.stored_bytes(owner)
    if room <= 0:
        raise StorageLimitReached(quota)
    try:
        async with store.receiving(limit=room) as received:
            form = await read_form(request.headers.get("content-type", ""), request.stream(), "file", received.write)
            purpose = form.fields.get("purpose")
            if purpose is None:
                raise InvalidRequest("`purpose` is required.", param="purpose")
            if purpose not in FILE_PURPOSES:
                raise InvalidRequest(f"`purpose` must be one of: {', '.join(sorted(FILE_PURPOSES))}.", param="purpose")
            if form.filename is None:
                raise InvalidRequest("`file` is required.", param="file")
            record = await store.keep(received, owner, form.filename, purpose, share=quota)
    except DatasetError as refused:
        raise InvalidRequest(f"The file is not a valid fine-tuning dataset: {refused}.", param="file") from None
    except FileTooLarge as refused:
        raise (_too_large(refused.limit) if refused.limit == store.max_bytes else StorageLimitReached(quota)) from None
    except OverShare:  # another upload of the tenant's was kept meanwhile
        raise StorageLimitReached(quota) from None
    except ClientDisconnect:
        return JSONResponse({}, status_code=499)  # nobody reads it; nothing was kept
    return JSONResponse(file_object(record).model_dump())


@router.get("/v1/files")
async def list_files(
    gateway: GatewayDep,
    caller: Caller,
    purpose: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
) -> FileList:
    await gateway.finetuning.ready()
    try:
        records = await gateway.finetuning.files.page(
            tenant_of(caller, None), purpose=purpose, limit=limit + 1, after=after, newest_first=order == "desc"
        )
    except UnknownCursor:
        raise InvalidRequest(f"`after` names no file of yours: `{after}`.", param="after") from None
    page = records[:limit]
    return FileList(
        data=[file_object(record) for record in page],
        first_id=page[0].id if page else None,
        last_id=page[-1].id if page else None,
        has_more=len(records) > limit,
    )


@router.get("/v1/files/{file_id}")
async def retrieve(file_id: str, gateway: GatewayDep, caller: Caller) -> FileObject:
    await gateway.finetuning.ready()
    return file_object(await _file(gateway, caller, file_id))


@router.delete("/v1/files/{file_id}")
async def delete(file_id: str, gateway: GatewayDep, caller: Caller) -> FileDeleted:
    await gateway.finetuning.ready()
    try:
        await gateway.finetuning.files.delete(tenant_of(caller, None), file_id)
    except UnknownFile:
        raise _no_file(file_id) from None
    return FileDeleted(id=file_id, deleted=True)


@router.get("/v1/files/{file_id}/content")
async def content(file_id: str, gateway: GatewayDep, caller: Caller) -> FileResponse:
    await gateway.finetuning.ready()
    record = await _file(gateway, caller, file_id)
    return FileResponse(gateway.finetuning.files.path(record.id), media_type="application/jsonl")


async def _file(gateway: GatewayDep, caller: Principal | None, file_id: str) -> File:
    try:
        return await gateway.finetuning.files.get(tenant_of(caller, None), file_id)
    except UnknownFile:
        raise _no_file(file_id) from None


def _no_file(file_id: str) -> NotFound:
    return NotFound(f"No such file: `{file_id}`.", param="file_id")


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The file is over the limit of {limit} bytes.", param="file")
