"""The fine-tuning records, as SQLAlchemy 2 tables: uploaded files, jobs, their events and
checkpoints. The same schema on PostgreSQL (production) and SQLite (the embedded default);
`finetune/migrations` creates and evolves it.

Times are Unix seconds, as OpenAI's API gives them. Every file and job has an `owner` (the
tenant that made it): one tenant never sees another's.
"""

from typing import Any, ClassVar

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "Checkpoint", "Event", "File", "Job"]


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, int: BigInteger}


class File(Base):
    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(256), index=True)
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int]
    lines: Mapped[int]  # examples in a JSONL dataset
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[int]


class Job(Base):
    __tablename__ = "jobs"
    # Lists page newest first by (created_at, id); workers look for the oldest queued job.
    __table_args__ = (
        Index("ix_jobs_owner_created", "owner", "created_at", "id"),
        Index("ix_jobs_status", "status"),
        # What a claim looks through: unfinished jobs only, however many finished ones pile up.
        Index(
            "ix_jobs_claimable",
            "enqueued_at",
            "id",
            postgresql_where=text("status IN ('validating_files', 'queued', 'running')"),
            sqlite_where=text("status IN ('validating_files', 'queued', 'running')"),
        ),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(256))
    model: Mapped[str] = mapped_column(String(256))
    suffix: Mapped[str | None] = mapped_column(String(64))
    seed: Mapped[int]
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64))
    hyperparameters: Mapped[dict[str, Any]]  # resolved: n_epochs, batch_size, learning_rate_multiplier, lora
    status: Mapped[str] = mapped_column(String(32))  # validating_files, queued, running, succeeded, failed, cancelled
    error: Mapped[dict[str, Any] | None]  # {code, message, param} when failed
    fine_tuned_model: Mapped[str | None] = mapped_column(String(512))
    trained_tokens: Mapped[int | None]
    created_at: Mapped[int]
    # The claim order (created_at is whole seconds); 0 from a gateway that predates it.
    enqueued_at: Mapped[float] = mapped_column(index=True, server_default="0")
    finished_at: Mapped[int | None]
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # The worker's claim: who runs it, until when (renewed by its heartbeat); how often claimed.
    worker: Mapped[str | None] = mapped_column(String(256))
    lease_expires_at: Mapped[float | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # claims: the fence
    lost: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # claims that found its worker dead
    # The client's key-value pairs (OpenAI's `metadata`; `metadata` itself is SQLAlchemy's).
    job_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_job_seq", "job_id", "seq"),)  # a job's events, a page at a time

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[int]
    level: Mapped[str] = mapped_column(String(16))  # info, warn, error
    message: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(String(16))  # message, metrics
    data: Mapped[dict[str, Any] | None]  # metrics: step, train_loss, valid_loss, ...


class Checkpoint(Base):
    __tablename__ = "checkpoints"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int]
    created_at: Mapped[int]
    metrics: Mapped[dict[str, Any]]
    path: Mapped[str] = mapped_column(String(1024))  # where the worker keeps what a resume needs
