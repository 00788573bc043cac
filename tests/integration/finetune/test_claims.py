"""Workers' claims on jobs (finetune/jobs.py), on SQLite and on a real PostgreSQL: the oldest
waiting job first; never one job to two workers, however many claim at once; a dead worker's
job taken over once its lease lapses, and the dead claim fenced off; a cancel seen at the next
heartbeat; a tenant's shares of jobs and storage holding against writers at once."""

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest

import finetune.jobs as jobs_module
from finetune.db import Database, sqlite_url
from finetune.files import FileStore, OverShare
from finetune.jobs import Claim, JobStore, NewJob, TooManyUnfinished
from finetune.schema import File, Job
from protocol import JobHyperparameters

LINE = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "ft.db")
    postgres: str = request.getfixturevalue("postgres_url")  # a database of its own, dropped after
    return postgres


@pytest.fixture
async def databases(url: str) -> AsyncIterator[list[Database]]:
    """Four connections' worth of workers (as four processes would have), migrated."""
    opened = [Database(url) for _ in range(4)]
    await opened[0].migrate()
    yield opened
    for database in opened:
        await database.close()


async def _jobs(store: JobStore, count: int) -> list[str]:
    ids = []
    for n in range(count):
        new = NewJob("alice", "base", f"file-{n}", None, n, None, JobHyperparameters())
        ids.append((await store.create(new)).id)
        await asyncio.sleep(0.002)
    return ids


async def test_claims_take_the_oldest_first_and_record_it(databases: list[Database]) -> None:
    store = JobStore(databases[0])
    first, _ = await _jobs(store, 2)
    claim = await store.claim("w1", lease_s=30)
    assert claim is not None
    assert (claim.job.id, claim.worker, claim.attempt) == (first, "w1", 1)
    events = [e.message for e in await store.events(await store.get("alice", first), limit=10)]
    assert events[0] == "Claimed by worker w1"


async def test_no_job_goes_to_two_workers_however_many_claim_at_once(databases: list[Database]) -> None:
    ids = await _jobs(JobStore(databases[0]), 10)
    claimed: list[str] = []

    async def worker(store: JobStore, name: str) -> None:
        while (claim := await store.claim(name, lease_s=30)) is not None:
            claimed.append(claim.job.id)

    await asyncio.gather(*(worker(JobStore(database), f"w{n}") for n, database in enumerate(databases)))
    assert sorted(claimed) == sorted(ids)  # each once: none lost, none twice


async def test_a_dead_workers_job_is_taken_over_and_its_claim_fenced_off(databases: list[Database]) -> None:
    store = JobStore(databases[0])
    [job] = await _jobs(store, 1)
    dead = await store.claim("dead", lease_s=0.2)
    assert dead is not None
    assert await store.claim("w2", lease_s=30) is None  # running, lease still good
    await asyncio.sleep(0.3)
    taken = await JobStore(databases[1]).claim("w2", lease_s=30)
    assert taken is not None
    assert (taken.job.id, taken.attempt) == (job, 2)
    assert await store.renew(dead, lease_s=30) is False
    assert await store.advance(dead, "succeeded") is False
    assert await store.advance(taken, "running") is True
    assert (await store.get("alice", job)).worker == "w2"
    messages = [e.message for e in await store.events(await store.get("alice", job), limit=10)]
    assert "Resumed by worker w2 after its last worker stopped" in messages


async def test_a_cancel_is_seen_at_the_next_heartbeat(databases: list[Database]) -> None:
    store = JobStore(databases[0])
    [job] = await _jobs(store, 1)
    claim = await store.claim("w1", lease_s=30)
    assert isinstance(claim, Claim)
    assert await store.advance(claim, "running")
    assert await store.renew(claim, lease_s=30)
    await store.cancel("alice", job)
    assert await store.renew(claim, lease_s=30) is False
    assert await store.advance(claim, "succeeded", fine_tuned_model="ft:base::x") is False
    cancelled = await store.get("alice", job)
    assert (cancelled.status, cancelled.fine_tuned_model) == ("cancelled", None)
    assert await store.claim("w2", lease_s=30) is None


async def test_a_finished_job_is_not_claimed_or_renewed(databases: list[Database]) -> None:
    store = JobStore(databases[0])
    [job] = await _jobs(store, 1)
    claim = await store.claim("w1", lease_s=30)
    assert claim is not None
    assert await store.advance(claim, "succeeded", fine_tuned_model="ft:base:s:id", trained_tokens=1234)
    done = await store.get("alice", job)
    assert (done.status, done.fine_tuned_model, done.trained_tokens, done.lease_expires_at) == (
        "succeeded",
        "ft:base:s:id",
        1234,
        None,
    )
    assert done.finished_at is not None
    assert await store.renew(claim, lease_s=30) is False
    assert await store.claim("w2", lease_s=30) is None


async def test_a_job_whose_workers_keep_dying_fails_instead_of_taking_them_all(databases: list[Database]) -> None:
    store = JobStore(databases[0])
    doomed, healthy = await _jobs(store, 2)
    for attempt in (1, 2):
        claim = await store.claim(f"w{attempt}", lease_s=0.05, max_attempts=2)
        assert claim is not None
        assert (claim.job.id, claim.attempt) == (doomed, attempt)
        await asyncio.sleep(0.1)  # the worker dies: its lease lapses
    nxt = await store.claim("w3", lease_s=30, max_attempts=2)
    assert nxt is not None
    assert nxt.job.id == healthy
    failed = await store.get("alice", doomed)
    assert failed.status == "failed"
    assert failed.error is not None
    assert failed.error["code"] == "worker_lost"


async def test_leases_are_timed_on_the_databases_clock(
    databases: list[Database], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = JobStore(databases[0])
    [job_id] = await _jobs(store, 1)
    held = await store.claim("w1", lease_s=60)
    assert held is not None
    real = time.time
    # A worker whose clock runs an hour ahead: to it, every lease has lapsed.
    monkeypatch.setattr(jobs_module, "time", SimpleNamespace(time=lambda: real() + 3600))
    assert await store.claim("w2", lease_s=60) is None
    assert await store.renew(held, lease_s=60)  # and one whose clock is behind keeps its own
    monkeypatch.setattr(jobs_module, "time", SimpleNamespace(time=lambda: real() - 3600))
    assert await store.claim("w3", lease_s=60) is None
    assert (await store.get("alice", job_id)).worker == "w1"


async def test_a_tenants_shares_hold_against_writers_at_once(databases: list[Database], tmp_path: Path) -> None:
    """Four processes' connections recording at once: at most `most_unfinished` jobs and
    `share` bytes of files of one owner get in (another owner's lock is not the same one)."""
    new = NewJob("alice", "base", "file-x", None, 1, None, JobHyperparameters())
    made = await asyncio.gather(
        *(JobStore(databases[n % 4]).create(new, most_unfinished=3) for n in range(12)), return_exceptions=True
    )
    assert sum(isinstance(job, Job) for job in made) == 3
    assert all(isinstance(job, (Job, TooManyUnfinished)) for job in made), made
    await JobStore(databases[0]).create(NewJob("bob", "base", "f", None, 1, None, JobHyperparameters()), 3)

    assert 500 // 6 < len(LINE) <= 500 // 4

    async def upload(n: int) -> File | OverShare:
        store = FileStore(databases[n % 4], tmp_path / "files", 1 << 20)
        async with store.receiving() as upload:
            await upload.write(LINE * 2)
            try:
                return await store.keep(upload, "alice", f"{n}.jsonl", "fine-tune", share=500)
            except OverShare as refused:
                return refused

    kept = await asyncio.gather(*(upload(n) for n in range(8)))
    assert sum(isinstance(file, File) for file in kept) == 2  # a third would pass 500 bytes
    assert await FileStore(databases[0], tmp_path / "files", 1 << 20).stored_bytes("alice") == 4 * len(LINE)
    assert len(list((tmp_path / "files").glob("*.jsonl"))) == 2  # the refused ones left nothing
