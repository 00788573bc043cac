"""Uploaded files: their bytes on disk under one folder, their records in the database.

An upload streams through `FileStore.save` chunk by chunk: each chunk is written to a
temporary file, hashed and checked line by line (finetune/datasets.py) on a worker thread, so
neither a large file nor its validation holds the event loop or memory. Only a file that
passed every check, whole, is renamed into place and recorded; anything else (a bad line, a
file over the limit, a client gone mid-upload) leaves nothing behind.
"""

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import Select, func, select

from finetune.datasets import LineChecker
from finetune.db import Database, owner_lock, write_lock
from finetune.records import UnknownCursor, is_id, new_id, owned, paged
from finetune.schema import File

__all__ = ["FILE_PURPOSES", "FileStore", "FileTooLarge", "OverShare", "UnknownFile", "Upload", "clean_filename"]

FILE_PURPOSES = frozenset({"fine-tune"})


def clean_filename(name: str, limit: int = 512) -> str:
    """An uploaded file's name as kept: no control characters, at most `limit` characters."""
    return "".join(c for c in name if c.isprintable())[:limit] or "file"


class FileTooLarge(ValueError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the file is larger than the limit of {limit} bytes")
        self.limit = limit


class OverShare(ValueError):
    """The upload would take the owner's files past its share of storage."""

    def __init__(self, share: int) -> None:
        super().__init__(f"the owner's files would be larger than its share of {share} bytes")
        self.share = share


class UnknownFile(LookupError):
    """No such file for this owner (another owner's file is unknown too)."""


class Upload:
    """One upload on its way to disk (`FileStore.receiving`): the temporary file, its hash and
    size, its lines checked. Written to a chunk at a time on a worker thread."""

    def __init__(self, path: Path, file: BinaryIO, limit: int) -> None:
        self.path = path
        self._file = file
        self._limit = limit
        self.size = 0
        self.sha256 = hashlib.sha256()
        self.checker = LineChecker()

    async def write(self, chunk: bytes) -> None:
        """Raises FileTooLarge past the limit and DatasetError at the first bad line."""
        await asyncio.to_thread(self._write, chunk)

    def _write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self._limit:
            raise FileTooLarge(self._limit)
        self.checker.feed(chunk)
        self.sha256.update(chunk)
        self._file.write(chunk)

    def finish(self) -> None:
        """The end of the upload: its last line checked, its bytes on disk."""
        self.checker.finish()
        self._file.flush()
        os.fsync(self._file.fileno())


class FileStore:
    def __init__(self, database: Database, folder: Path, max_bytes: int) -> None:
        self._database = database
        self._folder = folder
        self.max_bytes = max_bytes

    def path(self, file_id: str) -> Path:
        return self._folder / f"{file_id}.jsonl"

    def sweep(self, older_than_s: float = 3600.0) -> int:
        """Delete uploads a process that died left half-written (older than `older_than_s`, so
        that one another process is writing now is left alone); how many were deleted."""
        if not self._folder.exists():
            return 0
        cutoff, swept = time.time() - older_than_s, 0
        for partial in self._folder.glob(".*.part"):
            with contextlib.suppress(FileNotFoundError):
                if partial.stat().st_mtime < cutoff:
                    partial.unlink()
                    swept += 1
        return swept

    async def stored_bytes(self, owner: str) -> int:
        """The bytes of the owner's files together."""
        async with self._database.sessions() as session:
            return int(await session.scalar(_stored_bytes(owner)) or 0)

    @asynccontextmanager
    async def receiving(self, limit: int | None = None) -> AsyncIterator[Upload]:
        """A new upload of at most `limit` bytes (and `max_bytes`): write its chunks, then `keep`
        it. Whatever was not kept when the block ends (a refusal, a client gone mid-upload, a
        failure to record it) is deleted."""
        self._folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = self._folder / f".{new_id('upload')}.part"
        try:
            with await asyncio.to_thread(_create_private, partial) as out:
                yield Upload(partial, out, self.max_bytes if limit is None else min(limit, self.max_bytes))
        finally:
            partial.unlink(missing_ok=True)

    async def keep(self, upload: Upload, owner: str, filename: str, purpose: str, share: int | None = None) -> File:
        """The whole upload, checked to its end (DatasetError if it is not a dataset), renamed
        into place and recorded; OverShare when the owner's files, with it, would pass `share`
        bytes (checked as it is recorded, under the owner's lock: uploads at once add up)."""
        await asyncio.to_thread(upload.finish)
        file_id = new_id("file")
        record = File(
            id=file_id,
            owner=owner,
            filename=clean_filename(filename),
            purpose=purpose,
            bytes=upload.size,
            lines=upload.checker.lines,
            sha256=upload.sha256.hexdigest(),
            created_at=int(time.time()),
        )
        upload.path.rename(self.path(file_id))
        try:
            async with self._database.sessions.begin() as session:
                if share is not None:
                    await owner_lock(session, self._database.is_sqlite, owner)
                    stored = await session.scalar(_stored_bytes(owner))
                    if int(stored or 0) + upload.size > share:
                        raise OverShare(share)
                session.add(record)
        except BaseException:
            self.path(file_id).unlink(missing_ok=True)
            raise
        return record

    async def save(self, owner: str, filename: str, purpose: str, chunks: AsyncIterable[bytes]) -> File:
        """`receiving`, every chunk written, `keep`: an upload read whole from `chunks`."""
        async with self.receiving() as upload:
            async for chunk in chunks:
                await upload.write(chunk)
            return await self.keep(upload, owner, filename, purpose)

    async def get(self, owner: str, file_id: str) -> File:
        record = await owned(self._database, File, "file", file_id, owner)
        if record is None:
            raise UnknownFile(file_id)
        return record

    async def page(
        self,
        owner: str,
        *,
        purpose: str | None = None,
        limit: int = 10_000,
        after: str | None = None,
        newest_first: bool = True,
    ) -> list[File]:
        """A page of the owner's files, newest first (or oldest); `after`: those past that file
        (UnknownCursor when it is none of the owner's)."""
        query = select(File).where(File.owner == owner)
        if purpose is not None:
            query = query.where(File.purpose == purpose)
        cursor = None if after is None else await owned(self._database, File, "file", after, owner)
        if after is not None and cursor is None:
            raise UnknownCursor(after)
        query = paged(query, File, cursor, limit, newest_first)
        async with self._database.sessions() as session:
            return list((await session.scalars(query)).all())

    async def delete(self, owner: str, file_id: str) -> None:
        if not is_id("file", file_id):
            raise UnknownFile(file_id)
        async with self._database.sessions.begin() as session:
            await write_lock(session, self._database.is_sqlite)
            record = await session.get(File, file_id)
            if record is None or record.owner != owner:
                raise UnknownFile(file_id)
            await session.delete(record)
        self.path(file_id).unlink(missing_ok=True)


def _stored_bytes(owner: str) -> Select[int]:
    return select(func.coalesce(func.sum(File.bytes), 0)).where(File.owner == owner)


def _create_private(path: Path) -> BinaryIO:
    """A new file readable by this service's user alone: datasets are the tenants' data."""
    return open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")  # the caller closes it
