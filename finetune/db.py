"""The fine-tuning database: an async SQLAlchemy engine for a URL, its schema brought up to
date by the migrations before first use.

PostgreSQL in production (`postgresql+asyncpg://...`), SQLite on the embedded default
(`sqlite+aiosqlite:///path`). Several processes may start at once against one database (the
gateway's workers, the fine-tuning workers): the migrations run under a lock, PostgreSQL's
advisory lock or a lock file beside the SQLite database, so they run once.
"""

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

__all__ = ["Database", "database_now", "owner_lock", "sqlite_url", "write_lock"]

_MIGRATIONS = Path(__file__).with_name("migrations")
_LOCK_ID = 0x5357_4654  # PostgreSQL advisory lock held while migrating ("SWFT")


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


class Database:
    """One database: `sessions()` for the stores; `migrate()` once before use."""

    def __init__(self, url: str, *, connect_timeout_s: float = 5.0, command_timeout_s: float = 30.0) -> None:
        self.url = url
        # PostgreSQL: a server that stops answering fails a request in seconds, not a minute.
        options: dict[str, Any] = {} if self.is_sqlite else {"pool_pre_ping": True, "pool_timeout": 10}
        if not self.is_sqlite:
            options["connect_args"] = {"timeout": connect_timeout_s, "command_timeout": command_timeout_s}
        self.engine: AsyncEngine = create_async_engine(url, **options)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_connect)
            event.listen(self.engine.sync_engine, "begin", _sqlite_begin)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False, class_=AsyncSession)

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    async def migrate(self, revision: str = "head") -> None:
        """Bring the schema to `revision`, the newest by default (nothing when it is there)."""
        async with contextlib.AsyncExitStack() as stack:
            if self.is_sqlite:  # one migrator at a time (PostgreSQL: an advisory lock, in `_upgrade`)
                await stack.enter_async_context(_file_lock(Path(self.engine.url.database or "").with_suffix(".lock")))
            connection = await stack.enter_async_context(self.engine.connect())
            if self.is_sqlite:
                # A migration that alters a table rebuilds it on SQLite (copy, drop, rename): with
                # foreign keys on, the drop would delete every event and checkpoint of its jobs.
                # The pragma works only outside a transaction: on the driver's connection.
                raw = (await connection.get_raw_connection()).driver_connection
                assert raw is not None
                await raw.execute("PRAGMA foreign_keys=OFF")
                stack.push_async_callback(raw.execute, "PRAGMA foreign_keys=ON")
            await connection.run_sync(_upgrade, self.is_sqlite, revision)

    async def close(self) -> None:
        await self.engine.dispose()


def _upgrade(connection: Connection, sqlite: bool, revision: str) -> None:
    # Imported here: Alembic adds about 80 ms to every process that imports the gateway, and it
    # is needed only the once the database is migrated.
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    if not sqlite:
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
    command.upgrade(config, revision)
    if sqlite:
        broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
        if broken:
            raise RuntimeError(f"the migration left rows whose references are gone: {broken[:5]}")
    connection.commit()


def _sqlite_connect(dbapi_connection: Any, _: object) -> None:
    # The driver's own transaction handling off (it would begin some statements' transactions
    # itself, late): SQLAlchemy's begin event says when and how (SQLAlchemy's documented recipe).
    dbapi_connection.isolation_level = None
    # WAL: readers do not wait for the writer; a writer waits up to 10 s for another.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@contextlib.asynccontextmanager
async def _file_lock(path: Path, poll_s: float = 0.05) -> AsyncIterator[None]:
    """An exclusive lock on `path` between processes (and connections): polled, so waiting for
    it never blocks the event loop and a cancelled waiter leaves nothing held."""
    descriptor = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(poll_s)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _sqlite_begin(connection: Connection) -> None:
    # BEGIN IMMEDIATE (execution option `sqlite_begin`) takes the write lock at once, for a
    # transaction that reads and then writes what it read.
    connection.exec_driver_sql(connection.get_execution_options().get("sqlite_begin", "BEGIN"))


async def database_now(session: AsyncSession, sqlite: bool) -> float:
    """The database's clock in Unix seconds: leases are timed on this one clock, so a worker
    whose own clock is off can neither take a job whose lease still runs nor lose its own."""
    now = "(julianday('now') - 2440587.5) * 86400.0" if sqlite else "extract(epoch from clock_timestamp())"
    return float(await session.scalar(text(f"SELECT {now}")))


async def write_lock(session: AsyncSession, sqlite: bool) -> None:
    """On SQLite, begin the session's transaction with the write lock (BEGIN IMMEDIATE): a
    transaction that reads and then writes would otherwise fail at once ("database is
    locked") when another write committed in between. PostgreSQL locks the rows it selects."""
    if sqlite:
        await session.connection(execution_options={"sqlite_begin": "BEGIN IMMEDIATE"})


async def owner_lock(session: AsyncSession, sqlite: bool, owner: str) -> None:
    """Hold, until the session's transaction ends, a lock of `owner`'s: a check of the
    owner's share and the write it allows are one step, so two requests at once cannot both
    pass it (PostgreSQL: a transaction-scoped advisory lock on the owner's hash; SQLite: the
    database's write lock)."""
    if sqlite:
        await write_lock(session, sqlite)
    else:
        await session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:owner, 0))"), {"owner": owner})
