"""Uploaded files on SQLite and a folder: only a whole, valid file is kept and recorded; a bad
line, a file over the limit or an upload cut short leaves nothing; owners see only their own."""

import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from finetune.datasets import DatasetError
from finetune.db import Database, sqlite_url
from finetune.files import FileStore, FileTooLarge, UnknownFile

EXAMPLE = json.dumps({"messages": [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong"}]})
DATASET = ("\n".join([EXAMPLE] * 50) + "\n").encode()


async def _chunks(data: bytes, size: int = 100) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def _cut_short(data: bytes) -> AsyncIterator[bytes]:
    yield data[:300]
    raise ConnectionResetError("client gone")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[FileStore]:
    database = Database(sqlite_url(tmp_path / "ft.db"))
    await database.migrate()
    yield FileStore(database, tmp_path / "files", max_bytes=len(DATASET) * 2)
    await database.close()


def _kept(folder: Path) -> Iterable[str]:
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


async def test_a_valid_upload_is_kept_whole_and_recorded(store: FileStore, tmp_path: Path) -> None:
    record = await store.save("alice", "train.jsonl", "fine-tune", _chunks(DATASET))
    assert record.id.startswith("file-")
    assert (record.bytes, record.lines, record.filename) == (len(DATASET), 50, "train.jsonl")
    assert record.sha256 == hashlib.sha256(DATASET).hexdigest()
    assert store.path(record.id).read_bytes() == DATASET
    assert _kept(tmp_path / "files") == [f"{record.id}.jsonl"]
    fetched = await store.get("alice", record.id)
    assert (fetched.id, fetched.sha256) == (record.id, record.sha256)


@pytest.mark.parametrize(
    ("data", "refusal"),
    [
        (DATASET + b"{not json}\n", DatasetError),
        (DATASET * 3, FileTooLarge),
        (b"", DatasetError),
    ],
)
async def test_a_refused_upload_leaves_nothing(
    store: FileStore, tmp_path: Path, data: bytes, refusal: type[Exception]
) -> None:
    with pytest.raises(refusal):
        await store.save("alice", "train.jsonl", "fine-tune", _chunks(data))
    assert _kept(tmp_path / "files") == []
    assert await store.page("alice") == []


async def test_an_upload_cut_short_leaves_nothing(store: FileStore, tmp_path: Path) -> None:
    with pytest.raises(ConnectionResetError):
        await store.save("alice", "train.jsonl", "fine-tune", _cut_short(DATASET))
    assert _kept(tmp_path / "files") == []
    assert await store.page("alice") == []


async def test_an_owner_sees_and_deletes_only_its_own(store: FileStore) -> None:
    mine = await store.save("alice", "a.jsonl", "fine-tune", _chunks(DATASET))
    theirs = await store.save("bob", "b.jsonl", "fine-tune", _chunks(DATASET))
    assert [f.id for f in await store.page("alice")] == [mine.id]
    for attempt in (store.get("alice", theirs.id), store.delete("alice", theirs.id)):
        with pytest.raises(UnknownFile):
            await attempt
    assert store.path(theirs.id).exists()
    await store.delete("alice", mine.id)
    assert not store.path(mine.id).exists()
    with pytest.raises(UnknownFile):
        await store.get("alice", mine.id)


async def test_files_list_newest_first_a_page_at_a_time(store: FileStore) -> None:
    saved = [await store.save("alice", f"{n}.jsonl", "fine-tune", _chunks(DATASET)) for n in range(5)]
    everything = await store.page("alice")
    assert {f.id for f in everything} == {f.id for f in saved}
    assert [f.created_at for f in everything] == sorted((f.created_at for f in everything), reverse=True)
    first = await store.page("alice", limit=2)
    rest = await store.page("alice", after=first[-1].id)
    assert [f.id for f in first + rest] == [f.id for f in everything]


async def test_uploads_are_private_and_half_written_ones_are_swept(store: FileStore, tmp_path: Path) -> None:
    record = await store.save("alice", "a.jsonl", "fine-tune", _chunks(DATASET))
    folder = tmp_path / "files"
    assert folder.stat().st_mode & 0o777 == 0o700
    assert store.path(record.id).stat().st_mode & 0o777 == 0o600
    stale, fresh = folder / ".upload-old.part", folder / ".upload-new.part"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    assert store.sweep(older_than_s=3600) == 1
    assert _kept(folder) == sorted([".upload-new.part", f"{record.id}.jsonl"])
