"""The fine-tuning database on SQLite (the embedded default): the migrations make exactly the
schema the models declare, run once however many processes start together, and leave the
write-ahead log and foreign keys on."""

import asyncio
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, text

from finetune.db import Database, sqlite_url
from finetune.schema import Base
from protocol.fine_tuning import fine_tuned_name, owned_by


def _differences(connection: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


async def test_the_migrations_make_the_declared_schema(tmp_path: Path) -> None:
    database = Database(sqlite_url(tmp_path / "ft.db"))
    try:
        await database.migrate()
        async with database.engine.connect() as connection:
            tables = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
            assert tables == {"alembic_version", "files", "jobs", "events", "checkpoints"}
            assert await connection.run_sync(_differences) == []
            assert (await connection.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await connection.execute(text("PRAGMA foreign_keys"))).scalar() == 1
    finally:
        await database.close()


async def test_migrating_again_or_at_once_changes_nothing(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "ft.db")
    databases = [Database(url) for _ in range(4)]
    try:
        await asyncio.gather(*(database.migrate() for database in databases))
        await databases[0].migrate()
        async with databases[0].engine.connect() as connection:
            assert (await connection.execute(text("SELECT version_num FROM alembic_version"))).scalars().all() == [
                "0006"
            ]
    finally:
        for database in databases:
            await database.close()


async def test_a_migration_that_rebuilds_the_jobs_table_keeps_their_events(tmp_path: Path) -> None:
    """0003 alters `jobs`, which SQLite does by copying the table and dropping the old one: with
    foreign keys on during it, the drop would cascade to every event and checkpoint."""
    database = Database(sqlite_url(tmp_path / "ft.db"))
    try:
        await database.migrate("0002")
        async with database.engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO jobs (id, owner, model, seed, training_file, hyperparameters, status, created_at,"
                    " cancel_requested, attempts) VALUES ('ftjob-1', 'a', 'm', 1, 'file-1', '{}', 'queued', 100, 0, 0)"
                )
            )
            await connection.execute(
                text(
                    "INSERT INTO events (id, job_id, created_at, level, message, type)"
                    " VALUES ('ftevent-1', 'ftjob-1', 100, 'info', 'created', 'message')"
                )
            )
            await connection.execute(
                text(
                    "INSERT INTO checkpoints (id, job_id, step, created_at, metrics, path)"
                    " VALUES ('ftckpt-1', 'ftjob-1', 10, 100, '{}', '/x')"
                )
            )
        await database.migrate()
        async with database.engine.connect() as connection:
            assert (await connection.execute(text("SELECT count(*) FROM events"))).scalar() == 1
            assert (await connection.execute(text("SELECT count(*) FROM checkpoints"))).scalar() == 1
            assert (await connection.execute(text("SELECT enqueued_at FROM jobs"))).scalar() == 100  # its creation
            assert (await connection.execute(text("PRAGMA foreign_keys"))).scalar() == 1
    finally:
        await database.close()


async def test_fine_tuned_models_recorded_before_owner_tags_get_their_tagged_names(tmp_path: Path) -> None:
    database = Database(sqlite_url(tmp_path / "ft.db"))
    job_id = "ftjob-" + "a" * 24
    try:
        await database.migrate("0005")
        async with database.engine.begin() as connection:
            for job, suffix, name in ((job_id, "bot", f"ft:org/m:bot:{job_id}"), ("ftjob-2", None, None)):
                await connection.execute(
                    text(
                        "INSERT INTO jobs (id, owner, model, suffix, seed, training_file, hyperparameters, status,"
                        " created_at, cancel_requested, attempts, enqueued_at, lost, fine_tuned_model)"
                        " VALUES (:id, 'alice', 'org/m', :suffix, 1, 'file-1', '{}', 'succeeded', 100, 0, 1, 100, 0,"
                        " :name)"
                    ),
                    {"id": job, "suffix": suffix, "name": name},
                )
        await database.migrate()
        async with database.engine.connect() as connection:
            names: dict[str, str | None] = dict(
                (await connection.execute(text("SELECT id, fine_tuned_model FROM jobs"))).all()
            )
        assert names == {job_id: fine_tuned_name("org/m", "alice", "bot", job_id), "ftjob-2": None}
        assert owned_by(str(names[job_id]), "alice")
    finally:
        await database.close()
