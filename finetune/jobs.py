"""Fine-tuning jobs, their events and checkpoints, as records (the API's side: create, read,
cancel). Workers claim and run them (finetune/worker.py).

A job moves `validating_files → queued → running → succeeded | failed | cancelled`, as OpenAI's
do. Cancelling ends a job that has not finished at once: its status is `cancelled` from that
moment, and a worker running it sees so at its next heartbeat and stops.
"""

import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, and_, func, or_, select, update
from sqlalchemy.orm import aliased

from finetune.db import Database, database_now, owner_lock, write_lock
from finetune.records import UnknownCursor, is_id, new_id, owned, paged
from finetune.schema import Checkpoint, Event, Job
from protocol import JobHyperparameters

__all__ = ["FINISHED", "Claim", "JobStore", "NewJob", "NotCancellable", "TooManyUnfinished", "UnknownJob"]

UNFINISHED = ("validating_files", "queued", "running")

FINISHED = frozenset({"succeeded", "failed", "cancelled"})


class UnknownJob(LookupError):
    """No such job for this owner (another owner's job is unknown too)."""


class TooManyUnfinished(ValueError):
    """The owner already has as many unfinished jobs as it may."""


class NotCancellable(ValueError):
    def __init__(self, status: str) -> None:
        super().__init__(f"the job has already {status}")
        self.status = status


@dataclass(frozen=True)
class NewJob:
    owner: str
    model: str
    training_file: str
    validation_file: str | None
    seed: int
    suffix: str | None
    hyperparameters: JobHyperparameters  # the wire model's: `auto` resolved by the worker
    metadata: dict[str, str] | None = field(default=None)


@dataclass(frozen=True)
class Claim:
    """A worker's hold on a job: `attempt` fences it, so a worker whose lease lapsed and whose
    job another worker took can change nothing of it any more."""

    job: Job
    worker: str
    attempt: int


class JobStore:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def claim(
        self, worker: str, lease_s: float, max_attempts: int = 3, models: Collection[str] | None = None
    ) -> Claim | None:
        """The next job that waits, or whose worker's lease lapsed (it died), now `worker`'s for
        `lease_s`; None when there is none. Only jobs on `models` (the ones this worker can
        train), when given. Two workers never get the same job: PostgreSQL skips the rows
        another claim has locked, SQLite takes its write lock as it begins.

        Fair between tenants: a job whose owner has no other job running comes first, then the
        oldest. A job whose workers died `max_attempts` times fails (`worker_lost`) instead of
        being claimed again: one that kills every worker it runs on must not take them all down
        (a worker that stops and releases its job is no death)."""
        sqlite = self._database.is_sqlite
        async with self._database.sessions.begin() as session:
            await write_lock(session, sqlite)
            now = await database_now(session, sqlite)
            query = _claimable(now, models, sqlite)
            while (job := (await session.scalars(query)).first()) is not None:
                resumed = job.worker is not None  # a lapsed lease: its worker died
                if not (resumed and job.lost + 1 >= max_attempts):
                    break
                message = f"The job's worker stopped {job.lost + 1} times; it is not tried again"
                job.status, job.finished_at, job.lease_expires_at = "failed", int(now), None
                job.error = {"code": "worker_lost", "message": message, "param": None}
                session.add(_event(job.id, message, now=int(now), level="error"))
                await session.flush()  # the next look skips it
            if job is None:
                return None
            job.worker, job.lease_expires_at, job.attempts = worker, now + lease_s, job.attempts + 1
            job.lost += int(resumed)
            message = (
                f"Resumed by worker {worker} after its last worker stopped"
                if resumed
                else f"Claimed by worker {worker}"
            )
            session.add(_event(job.id, message, now=int(now)))
        return Claim(job, worker, job.attempts)

    async def renew(self, claim: Claim, lease_s: float) -> bool:
        """Extend the claim's lease (the worker's heartbeat); False when the job is no longer
        this claim's to run: cancelled, finished, or taken by another worker."""
        async with self._database.sessions.begin() as session:
            now = await database_now(session, self._database.is_sqlite)
            result = await session.execute(
                update(Job).where(_held(claim), Job.status.not_in(FINISHED)).values(lease_expires_at=now + lease_s)
            )
        return _changed(result)

    async def release(self, claim: Claim) -> bool:
        """Give the claimed job up (its worker is stopping), so that another worker resumes it at
        once; a release is no death of a worker (it does not count towards `max_attempts`)."""
        async with self._database.sessions.begin() as session:
            result = await session.execute(
                update(Job).where(_held(claim), Job.status.not_in(FINISHED)).values(worker=None, lease_expires_at=None)
            )
            if not _changed(result):
                return False
            session.add(
                _event(claim.job.id, f"Released by worker {claim.worker}, which is stopping", now=int(time.time()))
            )
        return True

    async def advance(self, claim: Claim, status: str, **changes: Any) -> bool:
        """Move the claimed job to `status` (with `changes`: error, fine_tuned_model, ...), with an
        event; False, changing nothing, when the claim no longer holds or the job has finished."""
        now = int(time.time())
        values = {"status": status, **changes}
        if status in FINISHED:
            values |= {"finished_at": now, "lease_expires_at": None}
        async with self._database.sessions.begin() as session:
            result = await session.execute(
                update(Job).where(_held(claim), Job.status.not_in(FINISHED)).values(**values)
            )
            if not _changed(result):
                return False
            session.add(_event(claim.job.id, _STATUS_MESSAGES.get(status, status), now=now, level=_level(status)))
        return True

    async def note(
        self, claim: Claim, message: str, *, level: str = "info", data: dict[str, Any] | None = None
    ) -> bool:
        """Add an event to the claimed job (`data`: a metrics event); False, adding nothing, when
        the claim no longer holds."""
        now = int(time.time())
        async with self._database.sessions.begin() as session:
            await write_lock(session, self._database.is_sqlite)
            if not await _holds(session, claim):
                return False
            session.add(_event(claim.job.id, message, now=now, level=level, data=data))
        return True

    async def save_checkpoint(self, claim: Claim, step: int, path: str, metrics: dict[str, Any]) -> Checkpoint | None:
        """Record the claimed job's checkpoint at `step`, kept at `path`, with an event; None,
        recording nothing, when the claim no longer holds."""
        now = int(time.time())
        checkpoint = Checkpoint(
            id=new_id("ftckpt"), job_id=claim.job.id, step=step, created_at=now, metrics=metrics, path=path
        )
        async with self._database.sessions.begin() as session:
            await write_lock(session, self._database.is_sqlite)
            if not await _holds(session, claim):
                return None
            session.add(checkpoint)
            session.add(_event(claim.job.id, f"Checkpoint saved at step {step}", now=now))
        return checkpoint

    async def served(self, models: Collection[str], limit: int) -> list[Job]:
        """The newest `limit` succeeded jobs on `models`: the adapters a fresh engine should hold."""
        query = (
            select(Job)
            .where(Job.status == "succeeded", Job.fine_tuned_model.is_not(None), Job.model.in_(sorted(models)))
            .order_by(Job.finished_at.desc(), Job.enqueued_at.desc())
            .limit(limit)
        )
        async with self._database.sessions() as session:
            return list((await session.scalars(query)).all())

    async def served_alike(self, job: Job, limit: int) -> list[Job]:
        """The newest `limit` other succeeded jobs of `job`'s owner on its model with its suffix:
        the region's earlier parts of its stacked name, newest first."""
        query = (
            select(Job)
            .where(
                Job.status == "succeeded",
                Job.owner == job.owner,
                Job.model == job.model,
                Job.suffix == job.suffix,
                Job.id != job.id,
            )
            .order_by(Job.finished_at.desc(), Job.enqueued_at.desc())
            .limit(limit)
        )
        async with self._database.sessions() as session:
            return list((await session.scalars(query)).all())

    async def status(self, job_id: str) -> str | None:
        """The job's status now (None when there is no such job)."""
        async with self._database.sessions() as session:
            return (await session.scalars(select(Job.status).where(Job.id == job_id))).first()

    async def last_checkpoint(self, job_id: str) -> Checkpoint | None:
        """The job's checkpoint of the highest step (the latest: steps only grow)."""
        query = select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step.desc()).limit(1)
        async with self._database.sessions() as session:
            return (await session.scalars(query)).first()

    async def create(self, new: NewJob, most_unfinished: int | None = None) -> Job:
        """Record a new job; TooManyUnfinished when the owner has `most_unfinished` unfinished
        jobs already (counted as it is recorded, under the owner's lock: creations at once add up)."""
        enqueued = time.time()
        now = int(enqueued)
        job = Job(
            id=new_id("ftjob"),
            owner=new.owner,
            model=new.model,
            suffix=new.suffix,
            seed=new.seed,
            training_file=new.training_file,
            validation_file=new.validation_file,
            hyperparameters=new.hyperparameters.model_dump(),
            status="validating_files",
            error=None,
            fine_tuned_model=None,
            trained_tokens=None,
            created_at=now,
            enqueued_at=enqueued,
            finished_at=None,
            cancel_requested=False,
            worker=None,
            lease_expires_at=None,
            attempts=0,
            lost=0,
            job_metadata=new.metadata,
        )
        async with self._database.sessions.begin() as session:
            if most_unfinished is not None:
                await owner_lock(session, self._database.is_sqlite, new.owner)
                if int(await session.scalar(_unfinished(new.owner)) or 0) >= most_unfinished:
                    raise TooManyUnfinished(new.owner)
            session.add(job)
            await session.flush()
            session.add(_event(job.id, f"Created fine-tuning job: {job.id}", now=now))
        return job

    async def get(self, owner: str, job_id: str) -> Job:
        job = await owned(self._database, Job, "ftjob", job_id, owner)
        if job is None:
            raise UnknownJob(job_id)
        return job

    async def page(self, owner: str, *, limit: int, after: str | None = None) -> list[Job]:
        """A page of the owner's jobs, newest first; `after`: those older than that job
        (UnknownCursor when it is none of the owner's)."""
        cursor = None if after is None else await owned(self._database, Job, "ftjob", after, owner)
        if after is not None and cursor is None:
            raise UnknownCursor(after)
        query = paged(select(Job).where(Job.owner == owner), Job, cursor, limit)
        async with self._database.sessions() as session:
            return list((await session.scalars(query)).all())

    async def cancel(self, owner: str, job_id: str) -> Job:
        """The job, cancelled now unless it had finished (NotCancellable)."""
        now = int(time.time())
        if not is_id("ftjob", job_id):
            raise UnknownJob(job_id)
        async with self._database.sessions.begin() as session:
            await write_lock(session, self._database.is_sqlite)
            job = await session.get(Job, job_id, with_for_update=not self._database.is_sqlite)
            if job is None or job.owner != owner:
                raise UnknownJob(job_id)
            if job.status in FINISHED:
                raise NotCancellable(job.status)
            job.status, job.cancel_requested, job.finished_at = "cancelled", True, now
            session.add(_event(job_id, "Fine-tuning job cancelled", now=now))
        return job

    async def events(self, job: Job, *, limit: int, after: str | None = None) -> list[Event]:
        """The job's events (the caller's `get` found it the owner's), newest first; `after`:
        those older than that event (UnknownCursor when it is none of the job's)."""
        query = select(Event).where(Event.job_id == job.id)
        if after is not None:
            cursor = None
            if is_id("ftevent", after):
                async with self._database.sessions() as session:
                    found = await session.scalars(select(Event.seq).where(Event.id == after, Event.job_id == job.id))
                    cursor = found.first()
            if cursor is None:
                raise UnknownCursor(after)
            query = query.where(Event.seq < cursor)
        async with self._database.sessions() as session:
            return list((await session.scalars(query.order_by(Event.seq.desc()).limit(limit))).all())

    async def checkpoints(self, job: Job, *, limit: int, after: str | None = None) -> list[Checkpoint]:
        """The job's checkpoints (the caller's `get` found it the owner's), newest first;
        `after`: those older than that checkpoint (UnknownCursor when it is none of the job's)."""
        query = select(Checkpoint).where(Checkpoint.job_id == job.id)
        if after is not None:
            cursor = None
            if is_id("ftckpt", after):
                async with self._database.sessions() as session:
                    cursor = await session.get(Checkpoint, after)
            if cursor is None or cursor.job_id != job.id:
                raise UnknownCursor(after)
            query = query.where(Checkpoint.step < cursor.step)
        async with self._database.sessions() as session:
            return list((await session.scalars(query.order_by(Checkpoint.step.desc()).limit(limit))).all())


def _claimable(now: float, models: Collection[str] | None, sqlite: bool) -> Any:
    """The next job a claim at `now` (the database's clock) may take: unfinished, its lease free
    (none, or lapsed), on one of `models`; first a job whose owner has nothing else running,
    then the oldest."""
    unheld = or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now)
    other = aliased(Job)
    owner_busy = (
        select(other.id)
        .where(other.owner == Job.owner, other.id != Job.id, other.status == "running")
        .where(other.lease_expires_at >= now)
        .exists()
    )
    query = select(Job).where(Job.status.in_(UNFINISHED), unheld)
    if models is not None:
        query = query.where(Job.model.in_(sorted(models)))
    query = query.order_by(owner_busy, Job.enqueued_at, Job.id).limit(1)
    return query if sqlite else query.with_for_update(skip_locked=True)


def _event(job_id: str, message: str, *, now: int, level: str = "info", data: dict[str, Any] | None = None) -> Event:
    return Event(
        id=new_id("ftevent"),
        job_id=job_id,
        created_at=now,
        level=level,
        message=message,
        type="metrics" if data is not None else "message",
        data=data,
    )


_STATUS_MESSAGES = {
    "queued": "Files validated; the job is queued",
    "running": "Fine-tuning job started",
    "succeeded": "The job has successfully completed",
    "failed": "The job failed",
}


def _level(status: str) -> str:
    return "error" if status == "failed" else "info"


def _changed(result: Any) -> bool:
    """Whether an UPDATE changed its one row."""
    return bool(result.rowcount == 1)


async def _holds(session: Any, claim: Claim) -> bool:
    """Whether `claim` still holds its unfinished job, the row locked (PostgreSQL) so that a
    claim or cancel racing this transaction waits for it."""
    query = select(Job.id).where(_held(claim), Job.status.not_in(FINISHED))
    return (await session.scalars(query.with_for_update())).first() is not None


def _held(claim: Claim) -> Any:
    return and_(Job.id == claim.job.id, Job.worker == claim.worker, Job.attempts == claim.attempt)


def _unfinished(owner: str) -> Select[int]:
    return select(func.count()).select_from(Job).where(Job.owner == owner, Job.status.in_(UNFINISHED))
