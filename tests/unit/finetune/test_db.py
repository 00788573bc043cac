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
                "0003"
            ]
    finally:
        for database in databases:
            await database.close()
