"""Fine-tuning workers as processes (`python -m finetune`) over PostgreSQL, a real engine and a
real gateway: a worker killed with SIGKILL mid-job is replaced by another that resumes the job
from its last checkpoint to the very adapter an unbroken run trains; two workers share ten
jobs, each run once; a database that goes away mid-job costs the job nothing."""

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from finetune.db import Database
from finetune.files import FileStore
from finetune.jobs import JobStore, NewJob
from finetune.schema import Event, Job
from harness.faultproxy import FaultProxy
from harness.servers import ServerProcess, free_port
from protocol import JobHyperparameters
from tests.conftest import MODEL, start_engine

pytestmark = pytest.mark.timeout(600)

OWNER = "tenant-a"


@dataclass
class _Region:
    engine: ServerProcess
    gateway: ServerProcess


@pytest.fixture(scope="module")
def region(builtin_model: Path, log_dir: Path) -> Iterator[_Region]:
    """An engine of its own (the adapters these tests load stay out of other tests' engine) and
    a gateway in front of it, which the workers ask until it lists their adapters."""
    engine = start_engine(builtin_model, MODEL, log_dir)
    port = free_port()
    pools = [{"name": "local", "replicas": [engine.url]}]
    env = {"SWITCHYARD_POOLS": json.dumps(pools), "SWITCHYARD_HEALTH_INTERVAL_S": "0.5"}
    gateway = ServerProcess("app", ["--port", str(port)], port=port, log_dir=log_dir, env=env, ready_path="/ready")
    try:
        yield _Region(engine, gateway.wait_ready())
    finally:
        gateway.stop()
        engine.stop()


@dataclass
class _Setup:
    jobs: JobStore
    files: FileStore
    data_dir: Path
    database_url: str
    region: _Region
    log_dir: Path

    def worker(self, name: str, database_url: str | None = None, lease_s: float = 3) -> ServerProcess:
        env = {
            "SWITCHYARD_DATA_DIR": str(self.data_dir),
            "SWITCHYARD_DATABASE_URL": database_url or self.database_url,
            "SWITCHYARD_FINETUNE_ENGINE_URL": self.region.engine.url,
            "SWITCHYARD_FINETUNE_GATEWAY_URL": self.region.gateway.url,
            "SWITCHYARD_FINETUNE_NAME": name,
            "SWITCHYARD_FINETUNE_LEASE_S": str(lease_s),
            "SWITCHYARD_FINETUNE_POLL_S": "0.2",
            "SWITCHYARD_FINETUNE_CHECKPOINT_STEPS": "8",
            "SWITCHYARD_FINETUNE_LEARNING_RATE": "0.01",
        }
        # A worker has no port; `ServerProcess` only starts it and keeps its output.
        return ServerProcess("finetune", [], port=free_port(), log_dir=self.log_dir, env=env)

    async def upload(self, examples: int) -> str:
        lines = [
            {"messages": [{"role": "user", "content": f"say {n}"}, {"role": "assistant", "content": f"{n} {n}"}]}
            for n in range(examples)
        ]

        async def chunks() -> AsyncIterator[bytes]:
            yield "".join(json.dumps(line) + "\n" for line in lines).encode()

        return (await self.files.save(OWNER, "train.jsonl", "fine-tune", chunks())).id

    async def job(self, training_file: str, **hyperparameters: object) -> Job:
        wanted = JobHyperparameters.model_validate({"n_epochs": 4, "batch_size": 2} | hyperparameters)
        return await self.jobs.create(NewJob(OWNER, MODEL, training_file, None, 5, "w", wanted))

    @staticmethod
    async def ready(worker: ServerProcess, timeout_s: float = 120) -> None:
        """Return once the worker says it is ready to claim."""
        deadline = time.monotonic() + timeout_s
        while True:
            if "ready" in worker.output():
                return
            assert worker.process.poll() is None, worker.output()
            assert time.monotonic() < deadline, "the worker did not start"
            await asyncio.sleep(0.1)

    async def finished(self, job: Job, timeout_s: float = 240) -> Job:
        deadline = time.monotonic() + timeout_s
        while (current := await self.jobs.get(OWNER, job.id)).status not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, f"{job.id} still {current.status}"
            await asyncio.sleep(0.2)
        return current

    async def checkpointed(self, job: Job, step: int, timeout_s: float = 240) -> None:
        """Return once the job has recorded a checkpoint at `step` or later."""
        deadline = time.monotonic() + timeout_s
        while True:
            if [c for c in await self.jobs.checkpoints(job, limit=1) if c.step >= step]:
                return
            assert time.monotonic() < deadline, f"{job.id} has no checkpoint at step {step}"
            await asyncio.sleep(0.05)

    async def adapter(self, job: Job) -> dict[str, torch.Tensor]:
        """The adapter the job's last claim trained."""
        attempts = (await self.jobs.get(OWNER, job.id)).attempts
        folder = self.data_dir / "finetune" / job.id / f"attempt-{attempts}" / "adapter"
        return load_file(folder / "adapter_model.safetensors")


@pytest.fixture
async def setup(
    postgres_url: str, region: _Region, builtin_model: Path, tmp_path: Path, log_dir: Path
) -> AsyncIterator[_Setup]:
    (tmp_path / "models").symlink_to(builtin_model.parent)
    database = Database(postgres_url)
    await database.migrate()
    files = FileStore(database, tmp_path / "files", 1 << 20)
    yield _Setup(JobStore(database), files, tmp_path, postgres_url, region, log_dir)
    await database.close()


def _messages(events: list[Event]) -> list[str]:
    return [event.message for event in events]


async def test_a_job_whose_worker_is_killed_is_resumed_to_the_same_adapter(setup: _Setup) -> None:
    training_file = await setup.upload(64)
    unbroken = await setup.job(training_file)
    killed = await setup.job(training_file)
    first = setup.worker("first")
    try:
        assert (await setup.finished(unbroken)).status == "succeeded"
        await setup.checkpointed(killed, 16)
        first.process.send_signal(signal.SIGKILL)
        first.process.wait()
        at_kill = await setup.jobs.get(OWNER, killed.id)
        assert at_kill.status == "running"  # killed mid-job: 128 steps in all
        second = setup.worker("second")
        try:
            done = await setup.finished(killed)
        finally:
            second.stop()
    finally:
        first.stop()
    assert done.status == "succeeded", done.error
    assert (done.attempts, done.lost) == (2, 1)
    messages = _messages(await setup.jobs.events(done, limit=1000))
    assert "Resumed by worker second after its last worker stopped" in messages
    assert any(message.startswith("Resuming from the checkpoint at step-") for message in messages)
    ours, theirs = await setup.adapter(done), await setup.adapter(unbroken)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)
    assert done.trained_tokens == (await setup.jobs.get(OWNER, unbroken.id)).trained_tokens


async def test_two_workers_share_ten_jobs_and_run_each_once(setup: _Setup) -> None:
    training_file = await setup.upload(8)
    workers = [setup.worker("one"), setup.worker("two")]
    try:
        for worker in workers:
            await setup.ready(worker)
        jobs = [await setup.job(training_file, n_epochs=1, batch_size=4) for _ in range(10)]
        done = [await setup.finished(job) for job in jobs]
    finally:
        for worker in workers:
            worker.stop()
    assert [job.status for job in done] == ["succeeded"] * 10
    assert all((job.attempts, job.lost) == (1, 0) for job in done)
    runners = set()
    for job in done:
        claims = [m for m in _messages(await setup.jobs.events(job, limit=100)) if m.startswith("Claimed by worker")]
        assert len(claims) == 1
        runners.add(claims[0])
    assert runners == {"Claimed by worker one", "Claimed by worker two"}  # both took some


async def test_a_database_that_goes_away_mid_job_costs_the_job_nothing(setup: _Setup) -> None:
    proxy = FaultProxy(5432)
    url = setup.database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    training_file = await setup.upload(64)
    unbroken = await setup.job(training_file)
    job = await setup.job(training_file)
    worker = setup.worker("flaky", database_url=url, lease_s=10)
    try:
        assert (await setup.finished(unbroken)).status == "succeeded"
        await setup.checkpointed(job, 1)
        proxy.set("down")  # connections refused, and those open cut
        await asyncio.sleep(2)  # within the lease: training goes on, checkpoints wait
        proxy.set("pass")
        done = await setup.finished(job)
    finally:
        worker.stop()
        proxy.close()
    assert done.status == "succeeded", done.error
    assert (done.attempts, done.lost) == (1, 0)  # the lease outlasted the outage: never claimed again
    ours, theirs = await setup.adapter(done), await setup.adapter(unbroken)
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)
