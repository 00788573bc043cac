"""Uploaded files: their bytes on disk under one folder, their records in the database.

An upload streams through `FileStore.save` chunk by chunk: each chunk is written to a
temporary file, hashed and checked line by line (finetune/datasets.py) on a worker thread, so
neither a large file nor its validation holds the event loop or memory. Only a file that
passed every check, whole, is renamed into place and recorded; anything else (a bad line, a
file over the limit, a client gone mid-upload) leaves nothing behind.
"""

import asyncio
import hashlib
import os
import secrets
import time
from collections.abc import AsyncIterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select, tuple_

from finetune.datasets import LineChecker
from finetune.db import Database
from finetune.schema import File

__all__ = ["FILE_PURPOSES", "FileStore", "FileTooLarge", "UnknownFile", "new_id"]

FILE_PURPOSES = frozenset({"fine-tune"})


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_urlsafe(18).replace('-', 'a').replace('_', 'b')}"


class FileTooLarge(ValueError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the file is larger than the limit of {limit} bytes")
        self.limit = limit


class UnknownFile(LookupError):
    """No such file for this owner (another owner's file is unknown too)."""


@dataclass
class _Upload:
    """One upload on its way to disk: the temporary file, its hash and size, its lines checked."""

    file: BinaryIO
    limit: int
    size: int = 0

    def __post_init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.checker = LineChecker()

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise FileTooLarge(self.limit)
        self.checker.feed(chunk)
        self.sha256.update(chunk)
        self.file.write(chunk)


class FileStore:
    def __init__(self, database: Database, folder: Path, max_bytes: int) -> None:
        self._database = database
        self._folder = folder
        self.max_bytes = max_bytes

    def path(self, file_id: str) -> Path:
        return self._folder / f"{file_id}.jsonl"

    async def save(self, owner: str, filename: str, purpose: str, chunks: AsyncIterable[bytes]) -> File:
        """Check and keep an uploaded dataset. A refused one (`DatasetError`, `FileTooLarge`) or
        an upload that ends early (the iterator raises) keeps nothing."""
        self._folder.mkdir(parents=True, exist_ok=True)
        file_id = new_id("file")
        partial = self._folder / f".{file_id}.part"
        try:
            with partial.open("wb") as out:
                upload = _Upload(out, self.max_bytes)
                async for chunk in chunks:
                    await asyncio.to_thread(upload.write, chunk)
                await asyncio.to_thread(upload.checker.finish)
                await asyncio.to_thread(os.fsync, out.fileno())
            record = File(
                id=file_id,
                owner=owner,
                filename=filename,
                purpose=purpose,
                bytes=upload.size,
                lines=upload.checker.lines,
                sha256=upload.sha256.hexdigest(),
                created_at=int(time.time()),
            )
            partial.rename(self.path(file_id))
            try:
                async with self._database.sessions.begin() as session:
                    session.add(record)
            except BaseException:
                self.path(file_id).unlink(missing_ok=True)
                raise
            return record
        finally:
            partial.unlink(missing_ok=True)

    async def get(self, owner: str, file_id: str) -> File:
        async with self._database.sessions() as session:
            record = await session.get(File, file_id)
        if record is None or record.owner != owner:
            raise UnknownFile(file_id)
        return record

    async def list(
        self, owner: str, *, purpose: str | None = None, limit: int = 10_000, after: str | None = None
    ) -> list[File]:
        """The owner's files, newest first; `after`: those older than that file."""
        query = select(File).where(File.owner == owner)
        if purpose is not None:
            query = query.where(File.purpose == purpose)
        if after is not None:
            cursor = await self.get(owner, after)
            query = query.where(tuple_(File.created_at, File.id) < (cursor.created_at, cursor.id))
        query = query.order_by(File.created_at.desc(), File.id.desc()).limit(limit)
        async with self._database.sessions() as session:
            return list((await session.scalars(query)).all())

    async def delete(self, owner: str, file_id: str) -> None:
        async with self._database.sessions.begin() as session:
            record = await session.get(File, file_id)
            if record is None or record.owner != owner:
                raise UnknownFile(file_id)
            await session.delete(record)
        self.path(file_id).unlink(missing_ok=True)
