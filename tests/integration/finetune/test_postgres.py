"""The fine-tuning database on a real PostgreSQL: the migrations make exactly the declared
schema, and several processes starting at once migrate it once (the advisory lock)."""

import asyncio

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, text

from finetune.db import Database
from finetune.schema import Base


def _differences(connection: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


async def test_the_migrations_make_the_declared_schema(postgres_url: str) -> None:
    databases = [Database(postgres_url) for _ in range(4)]
    try:
        await asyncio.gather(*(database.migrate() for database in databases))
        async with databases[0].engine.connect() as connection:
            tables = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
            assert tables == {"alembic_version", "files", "jobs", "events", "checkpoints"}
            assert await connection.run_sync(_differences) == []
            versions = (await connection.execute(text("SELECT version_num FROM alembic_version"))).scalars().all()
            assert versions == ["0006"]
    finally:
        for database in databases:
            await database.close()
