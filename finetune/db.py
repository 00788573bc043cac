"""The fine-tuning database: an async SQLAlchemy engine for a URL, its schema brought up to
date by the migrations before first use.

PostgreSQL in production (`postgresql+asyncpg://...`), SQLite on the embedded default
(`sqlite+aiosqlite:///path`). Several processes may start at once against one database (the
gateway's workers, the fine-tuning workers): the migrations run under a lock, PostgreSQL's
advisory lock or SQLite's own write lock, so they run once.
"""

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

__all__ = ["Database", "sqlite_url"]

_MIGRATIONS = Path(__file__).with_name("migrations")
_LOCK_ID = 0x5357_4654  # PostgreSQL advisory lock held while migrating ("SWFT")


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


class Database:
    """One database: `sessions()` for the stores; `migrate()` once before use."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: AsyncEngine = create_async_engine(url, pool_pre_ping=not self.is_sqlite)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False, class_=AsyncSession)

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    async def migrate(self) -> None:
        """Bring the schema to the newest migration (nothing when it is there already)."""
        async with self.engine.connect() as connection:
            await connection.run_sync(_upgrade, self.is_sqlite)

    async def close(self) -> None:
        await self.engine.dispose()


def _upgrade(connection: Connection, sqlite: bool) -> None:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    if sqlite:
        connection.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock: one migrator at a time
    else:
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
    command.upgrade(config, "head")
    connection.commit()


def _sqlite_pragmas(dbapi_connection: object, _: object) -> None:
    # WAL: readers do not wait for the writer; a writer waits up to 10 s for another.
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
