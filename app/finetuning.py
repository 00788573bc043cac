"""The gateway's side of fine-tuning: the database its files and jobs are recorded in, the
file store (the `finetune` package's), and on the embedded default the worker it runs.

The database is opened and migrated at the first fine-tuning request, in the background and
retried until it answers: that request and the next wait for it a few seconds and answer 503
while it is unreachable. A gateway that is never asked to fine-tune never opens it, and no
other route ever waits for it. A database that goes away later fails the requests that needed
it with 503 `database_unavailable` (`database_errors`, on those routes), never a 500.
"""

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable
from types import TracebackType

from sqlalchemy import exc

from app.errors import DatabaseUnavailable
from app.settings import GatewaySettings
from finetune.db import Database, sqlite_url
from finetune.files import FileStore
from finetune.jobs import JobStore
from protocol.processes import die_with_parent

__all__ = ["EmbeddedWorker", "FineTuning", "database_errors"]

log = logging.getLogger(__name__)

# What a database that is down, restarting or unreachable raises (a bug's errors are not here).
# (TimeoutError: a server that accepts but does not answer, from the driver's connect timeout.)
UNREACHABLE = (
    exc.OperationalError,
    exc.InterfaceError,
    exc.DisconnectionError,
    exc.TimeoutError,
    ConnectionError,
    TimeoutError,
)


class FineTuning:
    READY_WAIT_S = 5.0  # how long a request waits for the database before its 503

    def __init__(self, database: Database, files: FileStore) -> None:
        self.database = database
        self.files = files
        self.jobs = JobStore(database)
        self._migrated = asyncio.Event()
        self._migrating: asyncio.Task[None] | None = None
        self._attempt: asyncio.Future[None] | None = None  # a migration in flight

    @classmethod
    def of(cls, settings: GatewaySettings) -> "FineTuning":
        url = settings.database_url or sqlite_url(settings.data_dir / "finetune.db")
        if url.startswith("sqlite"):
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        database = Database(url)
        return cls(database, FileStore(database, settings.data_dir / "files", settings.max_upload_bytes))

    async def __aenter__(self) -> "FineTuning":
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._migrating is not None:
            self._migrating.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._migrating
        if self._attempt is not None and not self._attempt.done():
            # Not cancelled midway: its driver's thread would answer a loop that is gone.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._attempt), 10)
        await self.database.close()

    async def ready(self) -> None:
        """Return once the database is migrated; DatabaseUnavailable if it is not soon."""
        if self._migrated.is_set():
            return
        if self._migrating is None:
            self._migrating = asyncio.create_task(self._migrate(), name="finetune-migrate")
        try:
            await asyncio.wait_for(self._migrated.wait(), self.READY_WAIT_S)
        except TimeoutError:
            raise DatabaseUnavailable() from None

    async def _migrate(self, backoff_s: float = 0.5, max_backoff_s: float = 30.0) -> None:
        while True:
            self._attempt = asyncio.ensure_future(self.database.migrate())
            try:
                await asyncio.shield(self._attempt)
            except (*UNREACHABLE, OSError) as error:
                log.warning("fine-tuning database unreachable (%s); retrying in %.1f s", error, backoff_s)
            except Exception:  # not the network: permissions, a newer schema, a bug; logged, retried
                log.exception("fine-tuning database migration failed; retrying in %.1f s", backoff_s)
            else:
                swept = await asyncio.to_thread(self.files.sweep)
                if swept:
                    log.info("deleted %d half-written uploads a stopped gateway left", swept)
                self._migrated.set()
                return
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, max_backoff_s)


async def database_errors() -> AsyncIterator[None]:
    """A dependency of the fine-tuning routes: what an unreachable database raises while one
    runs is its 503, and only there (a timeout elsewhere in the gateway is not the database's)."""
    try:
        yield
    except UNREACHABLE as error:
        log.warning("fine-tuning database unreachable: %s", error)
        raise DatabaseUnavailable() from None


class EmbeddedWorker:
    """The fine-tuning worker of the embedded default: `python -m finetune` beside the embedded
    engine, sharing the gateway's data folder and database, loading adapters into that engine,
    and restarted when it dies. It asks the gateway whether a new adapter is listed with a
    token (`token`, renewed in a file only it and the gateway read) when auth is on."""

    RESTART_DELAY_S = 5.0  # doubled after each quick exit (a worker that cannot start), to 5 minutes
    HEALTHY_RUN_S = 600.0  # a worker that ran this long starts again at the first delay
    STOP_GRACE_S = 30.0  # a worker stops at its next training step, then releases its job
    TOKEN_TTL_S = 3600

    def __init__(
        self,
        settings: GatewaySettings,
        engine_url: str,
        engine_api_key: str,
        token: Callable[[int], str] | None,
    ) -> None:
        folder = settings.data_dir / "finetune"
        self._token_file = folder / "gateway.token" if token is not None else None
        self._token = token
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
        host = f"[{host}]" if ":" in host else host
        # Not the gateway's own settings (pool keys, the Redis URL, auth secrets): only its own.
        inherited = {name: value for name, value in os.environ.items() if not name.startswith("SWITCHYARD_")}
        self._env = {
            **inherited,
            "SWITCHYARD_DATA_DIR": str(settings.data_dir),
            "SWITCHYARD_FINETUNE_ENGINE_URL": engine_url,
            "SWITCHYARD_FINETUNE_ENGINE_API_KEY": engine_api_key,
            "SWITCHYARD_FINETUNE_GATEWAY_URL": f"http://{host}:{settings.port}",
            "SWITCHYARD_FINETUNE_LOG_LEVEL": settings.log_level,
        }
        if settings.database_url:
            self._env["SWITCHYARD_DATABASE_URL"] = settings.database_url
        if self._token_file is not None:
            self._env["SWITCHYARD_FINETUNE_TOKEN_FILE"] = str(self._token_file)
        self._process: asyncio.subprocess.Process | None = None
        self._supervising: asyncio.Task[None] | None = None

    async def __aenter__(self) -> "EmbeddedWorker":
        self._supervising = asyncio.create_task(self._supervise(), name="finetune-worker")
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._supervising is not None:
            self._supervising.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervising
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), self.STOP_GRACE_S)
        except TimeoutError:
            process.kill()
            await process.wait()

    async def _supervise(self) -> None:
        """Start the worker, renew its token, and start it again when it exits (or could not
        start), waiting longer after each quick exit."""
        delay = self.RESTART_DELAY_S
        while True:
            started = asyncio.get_running_loop().time()
            try:
                status = await self._run_once()
                log.warning("the fine-tuning worker exited with status %d; restarting it in %.0f s", status, delay)
            except Exception:
                log.exception("could not start the fine-tuning worker; trying again in %.0f s", delay)
            ran = asyncio.get_running_loop().time() - started
            delay = self.RESTART_DELAY_S if ran >= self.HEALTHY_RUN_S else min(delay * 2, 300.0)
            await asyncio.sleep(delay)

    async def _run_once(self) -> int:
        """Run the worker until it exits, renewing its token; its exit status."""
        await asyncio.to_thread(self._write_token)
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "finetune", env=self._env, preexec_fn=die_with_parent
        )
        log.info("started the fine-tuning worker (pid %d)", self._process.pid)
        while True:
            try:
                return await asyncio.wait_for(self._process.wait(), self.TOKEN_TTL_S / 2)
            except TimeoutError:
                await asyncio.to_thread(self._write_token)

    def _write_token(self) -> None:
        if self._token_file is None or self._token is None:
            return
        self._token_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        aside = self._token_file.with_suffix(".partial")
        with os.fdopen(os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:
            file.write(self._token(self.TOKEN_TTL_S))
        aside.replace(self._token_file)
