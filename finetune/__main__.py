"""`python -m finetune`: a fine-tuning worker. It claims jobs from the database the gateway
records them in, trains them, and makes their adapters servable; SIGTERM stops it at the next
training step, releasing its job for another worker to resume."""

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from finetune.db import Database, sqlite_url
from finetune.files import FileStore
from finetune.jobs import JobStore
from finetune.publish import Credentials, EnginePublisher, Publisher, Serving, SidecarPublisher
from finetune.settings import WorkerSettings
from finetune.worker import BaseModel, Worker

log = logging.getLogger("finetune")


def parse_args(argv: list[str] | None = None) -> WorkerSettings:
    parser = argparse.ArgumentParser(prog="python -m finetune", description=__doc__)
    parser.add_argument("--data-dir", help="where files, checkpoints and (by default) the SQLite database are")
    parser.add_argument("--engine-url", help="the engine that adapters are loaded into")
    parser.add_argument("--gateway-url", help="the region's gateway, asked until it lists a new adapter")
    parser.add_argument("--name", help="this worker's name in job events (default: host-pid)")
    parser.add_argument("--log-level")
    given: dict[str, Any] = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    try:
        return WorkerSettings(**given)
    except ValidationError as exc:  # exit 2 with what to fix, as for a bad flag
        parser.error("; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors()))


def base_models(settings: WorkerSettings) -> dict[str, BaseModel]:
    """The models this worker trains, each with its context length."""
    from transformers import AutoConfig

    if settings.models:
        folders = {name: Path(path).expanduser().resolve() for name, path in settings.models.items()}
    else:
        from engines.builtin_model import BUILTIN_MODEL_NAME, ensure_builtin_model

        folders = {BUILTIN_MODEL_NAME: ensure_builtin_model(settings.data_dir)}
    models = {}
    for name, folder in folders.items():
        length = settings.max_length or int(
            getattr(AutoConfig.from_pretrained(folder), "max_position_embeddings", 2048)
        )
        models[name] = BaseModel(name, folder, length)
    return models


async def serve(settings: WorkerSettings) -> None:
    if settings.sync_url is None and settings.engine_url is None:
        raise SystemExit(
            "a worker needs somewhere to publish adapters: SWITCHYARD_FINETUNE_SYNC_URL (the region's sync "
            "sidecar) or SWITCHYARD_FINETUNE_ENGINE_URL (one engine)"
        )
    url = settings.database_url or sqlite_url(settings.data_dir / "finetune.db")
    database = Database(url)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        await _migrated(database, stopping)
        publisher = _publisher(settings)
        files = FileStore(database, settings.data_dir / "files", max_bytes=1)  # reads only
        worker = Worker(
            JobStore(database),
            files,
            await asyncio.to_thread(base_models, settings),
            publisher,
            settings.data_dir / "finetune",
            name=settings.name,
            lease_s=settings.lease_s,
            poll_s=settings.poll_s,
            checkpoint_steps=settings.checkpoint_steps,
            base_learning_rate=settings.learning_rate,
            publish_timeout_s=settings.publish_timeout_s,
        )
        if settings.restore_adapters:
            try:
                restored = await worker.restore(settings.restore_adapters)
                log.info("published again %d fine-tuned adapters' names the region lacked", restored)
            except Exception as error:  # the engine, sidecar or database away: the jobs come first
                log.warning("could not restore fine-tuned adapters: %s", error)
        log.info("fine-tuning worker %s ready", settings.name)
        await worker.run(stopping)
    finally:
        await database.close()


def _publisher(settings: WorkerSettings) -> Publisher:
    secret = settings.client_secret.get_secret_value() if settings.client_secret else None
    credentials = Credentials(settings.token_file, settings.token_url, settings.client_id, secret)
    serving = Serving(settings.gateway_url, credentials)
    if settings.sync_url is not None:
        return SidecarPublisher(settings.sync_url, credentials, serving)
    key = settings.engine_api_key.get_secret_value() if settings.engine_api_key else None
    return EnginePublisher(str(settings.engine_url), key, serving)


async def _migrated(database: Database, stopping: asyncio.Event, backoff_s: float = 0.5) -> None:
    """Migrate the database, retried with backoff while it is unreachable (or until stopped)."""
    while True:
        try:
            await database.migrate()
            return
        except Exception as error:  # unreachable, or a newer schema: logged, tried again
            log.warning("fine-tuning database not ready (%s); retrying in %.1f s", error, backoff_s)
        try:
            await asyncio.wait_for(stopping.wait(), backoff_s)
            raise SystemExit(0)
        except TimeoutError:
            backoff_s = min(backoff_s * 2, 30.0)


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    os.nice(settings.nice)  # training yields the CPU to the engine and gateway it may share a host with
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
