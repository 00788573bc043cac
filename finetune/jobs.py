"""Fine-tuning jobs, their events and checkpoints, as records (the API's side: create, read,
cancel). Workers claim and run them (finetune/worker.py).

A job moves `validating_files → queued → running → succeeded | failed | cancelled`, as OpenAI's
do. Cancelling ends a job that has not finished at once: its status is `cancelled` from that
moment, and a worker running it sees so at its next heartbeat and stops.
"""

import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, tuple_, update

from finetune.db import Database
from finetune.files import new_id
from finetune.schema import Checkpoint, Event, Job

__all__ = ["FINISHED", "Hyperparameters", "JobStore", "NotCancellable", "UnknownJob"]

FINISHED = frozenset({"succeeded", "failed", "cancelled"})


class UnknownJob(LookupError):
    """No such job for this owner (another owner's job is unknown too)."""


class NotCancellable(ValueError):
    def __init__(self, status: str) -> None:
        super().__init__(f"the job has already {status}")
        self.status = status


@dataclass(frozen=True)
class Hyperparameters:
    """What a job trains with; `auto` resolved by the worker from the dataset's size."""

    n_epochs: int | str = "auto"
    batch_size: int | str = "auto"
    learning_rate_multiplier: float | str = "auto"
    lora_rank: int = 8
    lora_alpha: int = 16

    def as_record(self) -> dict[str, Any]:
        return {
            "n_epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "learning_rate_multiplier": self.learning_rate_multiplier,
            "lora_rank": self.lora_rank,
            "lora_alpha": self.lora_alpha,
        }


@dataclass(frozen=True)
class NewJob:
    owner: str
    model: str
    training_file: str
    validation_file: str | None
    seed: int
    suffix: str | None
    hyperparameters: Hyperparameters
    metadata: dict[str, str] | None = field(default=None)


class JobStore:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def create(self, new: NewJob) -> Job:
        now = int(time.time())
        job = Job(
            id=new_id("ftjob"),
            owner=new.owner,
            model=new.model,
            suffix=new.suffix,
            seed=new.seed,
            training_file=new.training_file,
            validation_file=new.validation_file,
            hyperparameters=new.hyperparameters.as_record(),
            status="validating_files",
            error=None,
            fine_tuned_model=None,
            trained_tokens=None,
            created_at=now,
            finished_at=None,
            cancel_requested=False,
            worker=None,
            lease_expires_at=None,
            attempts=0,
            job_metadata=new.metadata,
        )
        async with self._database.sessions.begin() as session:
            session.add(job)
            await session.flush()
            session.add(_event(job.id, f"Created fine-tuning job: {job.id}", now=now))
        return job

    async def get(self, owner: str, job_id: str) -> Job:
        async with self._database.sessions() as session:
            job = await session.get(Job, job_id)
        if job is None or job.owner != owner:
            raise UnknownJob(job_id)
        return job

    async def page(self, owner: str, *, limit: int, after: str | None = None) -> list[Job]:
        """A page of the owner's jobs, newest first; `after`: those older than that job."""
        query = select(Job).where(Job.owner == owner)
        if after is not None:
            cursor = await self.get(owner, after)
            query = query.where(tuple_(Job.created_at, Job.id) < (cursor.created_at, cursor.id))
        query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
        async with self._database.sessions() as session:
            return list((await session.scalars(query)).all())

    async def cancel(self, owner: str, job_id: str) -> Job:
        """The job, cancelled now unless it had finished (NotCancellable)."""
        now = int(time.time())
        async with self._database.sessions.begin() as session:
            job = await session.get(Job, job_id, with_for_update=not self._database.is_sqlite)
            if job is None or job.owner != owner:
                raise UnknownJob(job_id)
            if job.status in FINISHED:
                raise NotCancellable(job.status)
            await session.execute(
                update(Job).where(Job.id == job_id).values(status="cancelled", cancel_requested=True, finished_at=now)
            )
            session.add(_event(job_id, "Fine-tuning job cancelled", now=now))
        return await self.get(owner, job_id)

    async def events(self, owner: str, job_id: str, *, limit: int, after: str | None = None) -> list[Event]:
        """The job's events, newest first; `after`: those older than that event."""
        await self.get(owner, job_id)
        query = select(Event).where(Event.job_id == job_id)
        if after is not None:
            async with self._database.sessions() as session:
                cursor = (
                    await session.scalars(select(Event.seq).where(Event.id == after, Event.job_id == job_id))
                ).first()
            if cursor is None:
                raise UnknownJob(after)
            query = query.where(Event.seq < cursor)
        async with self._database.sessions() as session:
            return list((await session.scalars(query.order_by(Event.seq.desc()).limit(limit))).all())

    async def checkpoints(self, owner: str, job_id: str, *, limit: int, after: str | None = None) -> list[Checkpoint]:
        """The job's checkpoints, newest first; `after`: those older than that checkpoint."""
        await self.get(owner, job_id)
        query = select(Checkpoint).where(Checkpoint.job_id == job_id)
        if after is not None:
            async with self._database.sessions() as session:
                cursor = await session.get(Checkpoint, after)
            if cursor is None or cursor.job_id != job_id:
                raise UnknownJob(after)
            query = query.where(Checkpoint.step < cursor.step)
        async with self._database.sessions() as session:
            return list((await session.scalars(query.order_by(Checkpoint.step.desc()).limit(limit))).all())


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
