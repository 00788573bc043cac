"""A fine-tuning worker (finetune/worker.py) over SQLite and the built-in model, publishing to a
fake that records what it was given: a job through every status to its served name; bad data,
an unknown model and a refused publish failing it with errors that say why; a cancel stopping it
within its heartbeat; a worker stopping mid-job and another resuming it to the very adapter an
unbroken run trains."""

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from finetune.db import Database, sqlite_url
from finetune.files import FileStore
from finetune.jobs import JobStore, NewJob
from finetune.publish import NotServable, Superseded
from finetune.schema import Job
from finetune.worker import BaseModel, Worker, fine_tuned_name
from protocol import JobHyperparameters
from protocol.fine_tuning import owner_tag

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

OWNER = "tenant-a"
MODEL = "switchyard-tiny-v1"
PING = {"messages": [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong pong pong"}]}


class FakePublisher:
    """A fake region: records each part it is asked to put (a copy of the adapter's weights, by
    name, in order) and each it is asked to take back; refuses the first `refusals` puts (all:
    None) and every put of a name in `refused`, and has `wait_listed` wait for `gate` when given.
    Each put's token is `t<put number>`; a conditional change honours it as a sidecar does."""

    def __init__(
        self,
        refusals: int | None = 0,
        gate: asyncio.Event | None = None,
        refused: frozenset[str] = frozenset(),
        lasting: bool = False,
    ) -> None:
        self.published: dict[str, dict[str, torch.Tensor]] = {}
        self.folders: dict[str, Path] = {}  # each name's part now
        self.parts: dict[str, str] = {}  # each name's part's token
        self.withdrawn: list[tuple[str, str]] = []
        self.refusals, self.tries = refusals, 0
        self.gate, self.refused, self.lasting = gate, refused, lasting

    async def put(self, name: str, adapter: Path, base_model: str, replaces: str | None = None) -> str:
        self.tries += 1
        if self.refusals is None or self.tries <= self.refusals or name in self.refused:
            reason = "the engine refused it (HTTP 400)" if self.lasting else "the engine could not be reached"
            raise NotServable(reason, "http://10.0.0.7:8100: No adapter at /srv/x", lasting=self.lasting)
        if replaces is not None and self.parts.get(name) != replaces:
            raise Superseded(name)
        self.published[name] = load_file(adapter / "adapter_model.safetensors")
        self.folders[name], self.parts[name] = adapter, f"t{self.tries}"
        return self.parts[name]

    async def wait_listed(self, name: str) -> None:
        if self.gate is not None:
            await self.gate.wait()

    async def withdraw(self, name: str, token: str) -> None:
        self.withdrawn.append((name, token))
        if self.parts.get(name) == token:
            del self.parts[name], self.folders[name]

    async def known(self) -> set[str]:
        return set(self.parts)

    async def unpublish(self, name: str) -> None:
        self.parts.pop(name, None)
        self.folders.pop(name, None)


@dataclass
class _Setup:
    jobs: JobStore
    files: FileStore
    folder: Path
    models: dict[str, BaseModel]

    def worker(self, name: str, publisher: FakePublisher, **options: Any) -> Worker:
        options = {"lease_s": 3.0, "poll_s": 0.05, "checkpoint_steps": 4, "base_learning_rate": 1e-2} | options
        options.setdefault("publish_backoff_s", 0.01)
        options.setdefault("publish_timeout_s", 0.3)
        return Worker(self.jobs, self.files, self.models, publisher, self.folder, name=name, **options)

    async def upload(self, lines: list[str]) -> str:
        async def chunks() -> AsyncIterator[bytes]:
            yield "".join(line + "\n" for line in lines).encode()

        return (await self.files.save(OWNER, "train.jsonl", "fine-tune", chunks())).id

    async def job(
        self, training_file: str, model: str = MODEL, owner: str = OWNER, suffix: str | None = "pong", **wanted: Any
    ) -> Job:
        hyperparameters = JobHyperparameters.model_validate({"n_epochs": 3, "batch_size": 8} | wanted)
        new = NewJob(owner, model, training_file, None, seed=3, suffix=suffix, hyperparameters=hyperparameters)
        return await self.jobs.create(new)


@pytest.fixture
async def setup(tmp_path: Path, builtin_model: Path) -> AsyncIterator[_Setup]:
    database = Database(sqlite_url(tmp_path / "ft.db"))
    await database.migrate()
    files = FileStore(database, tmp_path / "files", 1 << 20)
    models = {MODEL: BaseModel(MODEL, builtin_model, max_length=64)}
    yield _Setup(JobStore(database), files, tmp_path / "jobs", models)
    await database.close()


async def _events(setup: _Setup, job: Job) -> list[Any]:
    return list(reversed(await setup.jobs.events(job, limit=1000)))


async def _until(seen: Callable[[list[Any]], bool], setup: _Setup, job: Job, timeout_s: float = 60) -> None:
    """Return once the job's events satisfy `seen`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        if seen(await _events(setup, job)):
            return
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_a_job_goes_through_every_status_to_its_served_name(setup: _Setup) -> None:
    job = await setup.job(await setup.upload([json.dumps(PING)] * 32))
    publisher = FakePublisher()
    assert await setup.worker("w1", publisher).run_once()
    done = await setup.jobs.get(OWNER, job.id)
    assert done.status == "succeeded"
    assert done.fine_tuned_model == f"ft:{MODEL}:{owner_tag(OWNER)}:pong:{job.id}"
    assert done.error is None
    assert done.trained_tokens is not None
    assert done.trained_tokens > 0
    stacked = f"ft:{MODEL}:{owner_tag(OWNER)}:pong"  # this region's part of what every region stacks
    assert list(publisher.published) == [done.fine_tuned_model, stacked]
    events = await _events(setup, job)
    messages = [event.message for event in events if event.type == "message"]
    assert messages[:3] == [
        f"Created fine-tuning job: {job.id}",
        "Claimed by worker w1",
        f"Validating training file: {job.training_file}",
    ]
    published = f"Publishing the adapter as {done.fine_tuned_model} and {stacked}"
    assert messages[-2:] == [published, "The job has successfully completed"]
    assert "Files validated; the job is queued" in messages
    assert "Fine-tuning job started" in messages
    metrics = [event.data for event in events if event.type == "metrics"]
    assert [data["step"] for data in metrics] == list(range(1, 13))  # 4 steps an epoch, 3 epochs
    assert all(data["total_steps"] == 12 for data in metrics)
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    checkpoints = await setup.jobs.checkpoints(done, limit=10)
    assert [checkpoint.step for checkpoint in checkpoints] == [12, 8, 4]
    # What `auto` and the base rate came to, as the job now shows them.
    assert done.hyperparameters == {
        "n_epochs": 3,
        "batch_size": 8,
        "learning_rate_multiplier": 1.0,
        "lora_rank": 8,
        "lora_alpha": 16,
    }
    assert all(os.path.isdir(checkpoint.path) for checkpoint in checkpoints)  # noqa: ASYNC240


async def test_a_line_over_the_context_length_fails_the_job_naming_it(setup: _Setup) -> None:
    # (Lines that are no chat at all are refused at upload: finetune/datasets.py's tests.)
    long = {"messages": [{"role": "user", "content": "ping " * 40}, {"role": "assistant", "content": "x"}]}
    job = await setup.job(await setup.upload([json.dumps(PING), json.dumps(PING), json.dumps(long)]))
    publisher = FakePublisher()
    assert await setup.worker("w1", publisher).run_once()
    failed = await setup.jobs.get(OWNER, job.id)
    assert failed.status == "failed"
    assert failed.error is not None
    assert (failed.error["code"], failed.error["param"]) == ("invalid_training_file", "training_file")
    assert failed.error["message"].startswith("Training file: line 3: ")
    assert failed.error["message"].endswith("tokens, over the model's context length of 64")
    assert publisher.published == {}
    assert await setup.jobs.checkpoints(failed, limit=10) == []


async def test_a_job_on_a_model_this_worker_cannot_train_is_left_for_one_that_can(setup: _Setup) -> None:
    job = await setup.job(await setup.upload([json.dumps(PING)]), model="other-model")
    assert not await setup.worker("w1", FakePublisher()).run_once()
    left = await setup.jobs.get(OWNER, job.id)
    assert (left.status, left.worker) == ("validating_files", None)


async def test_a_chat_the_template_refuses_fails_the_job_naming_its_line(setup: _Setup, tmp_path: Path) -> None:
    strict = tmp_path / "strict-model"
    shutil.copytree(setup.models[MODEL].path, strict)
    tokenizer = AutoTokenizer.from_pretrained(strict)
    refusal = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversations start with a user turn') }}{% endif %}"
    )
    tokenizer.chat_template = refusal + tokenizer.chat_template
    tokenizer.save_pretrained(strict)
    setup.models[MODEL] = BaseModel(MODEL, strict, max_length=64)
    system_first = {"messages": [{"role": "system", "content": "Be brief."}, *PING["messages"]]}
    job = await setup.job(await setup.upload([json.dumps(PING), json.dumps(system_first)]))
    assert await setup.worker("w1", FakePublisher()).run_once()
    failed = await setup.jobs.get(OWNER, job.id)
    assert failed.error is not None
    assert failed.error["code"] == "invalid_training_file"
    assert failed.error["message"].startswith(
        "Training file: line 2: the base model's chat template could not render it"
    )
    assert "Conversations start with a user turn" in failed.error["message"]


async def test_a_refused_publish_is_tried_again_and_then_fails_without_internals(setup: _Setup) -> None:
    lines = [json.dumps(PING)] * 8
    flaky = FakePublisher(refusals=2)
    job = await setup.job(await setup.upload(lines), n_epochs=1)
    assert await setup.worker("w1", flaky).run_once()
    assert (await setup.jobs.get(OWNER, job.id)).status == "succeeded"
    assert flaky.tries == 4  # two refusals, then the job's name and its stacked name
    job = await setup.job(await setup.upload(lines), n_epochs=1)
    away = FakePublisher(refusals=None)  # never reached: tried again, backing off, until publish_timeout_s
    assert await setup.worker("w1", away).run_once()
    failed = await setup.jobs.get(OWNER, job.id)
    assert failed.status == "failed"
    assert failed.error == {
        "code": "publish_failed",
        "message": "the adapter was trained but could not be served: the engine could not be reached",
        "param": None,
    }  # no engine address, no path
    assert failed.fine_tuned_model is None
    assert 4 <= away.tries <= 6  # 0.01 s, doubling, within 0.3 s
    job = await setup.job(await setup.upload(lines), n_epochs=1)
    refusing = FakePublisher(refusals=None, lasting=True)  # the adapter itself refused: asking again won't help
    assert await setup.worker("w1", refusing, publish_timeout_s=60).run_once()
    error = (await setup.jobs.get(OWNER, job.id)).error
    assert error is not None
    assert error["message"].endswith("the engine refused it (HTTP 400)")
    assert refusing.tries == 1


async def test_a_job_cancelled_while_its_publishing_waits_to_try_again_stops_at_once(setup: _Setup) -> None:
    job = await setup.job(await setup.upload([json.dumps(PING)] * 8), n_epochs=1)
    away = FakePublisher(refusals=None)
    running = asyncio.create_task(
        setup.worker("w1", away, lease_s=0.6, publish_backoff_s=30, publish_timeout_s=600).run_once()
    )
    await _until(lambda events: any(e.message.startswith("Publishing the adapter") for e in events), setup, job)
    await setup.jobs.cancel(OWNER, job.id)
    assert await asyncio.wait_for(running, 5)  # within the heartbeat, not after the 30 s backoff
    assert (await setup.jobs.get(OWNER, job.id)).status == "cancelled"
    assert away.tries == 1


async def test_a_job_that_fails_to_publish_takes_back_what_it_had_put(setup: _Setup) -> None:
    job = await setup.job(await setup.upload([json.dumps(PING)] * 8), n_epochs=1)
    stacked = f"ft:{MODEL}:{owner_tag(OWNER)}:pong"
    half = FakePublisher(refused=frozenset({stacked}))  # its own name goes in, its stacked name never
    assert await setup.worker("w1", half).run_once()
    assert (await setup.jobs.get(OWNER, job.id)).status == "failed"
    assert [name for name, _ in half.withdrawn] == [fine_tuned_name(job)]  # its last part, by its token
    assert half.parts == {}  # nothing of a failed job stays served


async def test_a_job_cancelled_while_it_is_published_has_its_adapter_taken_back(setup: _Setup) -> None:
    gate = asyncio.Event()
    publisher = FakePublisher(gate=gate)
    job = await setup.job(await setup.upload([json.dumps(PING)] * 8), n_epochs=1)
    running = asyncio.create_task(setup.worker("w1", publisher).run_once())
    await _until(lambda events: any(e.message.startswith("Publishing the adapter") for e in events), setup, job)
    await setup.jobs.cancel(OWNER, job.id)
    gate.set()
    assert await running
    cancelled = await setup.jobs.get(OWNER, job.id)
    assert (cancelled.status, cancelled.fine_tuned_model) == ("cancelled", None)
    own, stacked = publisher.published
    assert publisher.withdrawn == [(own, "t1"), (stacked, "t2")]  # its parts, while they are still its
    assert publisher.parts == {}


async def test_a_cancelled_jobs_part_of_the_stack_goes_back_to_the_regions_previous_job(setup: _Setup) -> None:
    training_file = await setup.upload([json.dumps(PING)] * 8)
    publisher = FakePublisher()
    earlier = await setup.job(training_file, n_epochs=1)
    assert await setup.worker("w1", publisher).run_once()
    stacked = f"ft:{MODEL}:{owner_tag(OWNER)}:pong"
    earlier_adapter = publisher.folders[stacked]
    publisher.gate = asyncio.Event()
    later = await setup.job(training_file, n_epochs=2)  # other weights
    running = asyncio.create_task(setup.worker("w1", publisher).run_once())
    await _until(lambda events: any(e.message.startswith("Publishing the adapter") for e in events), setup, later)
    await setup.jobs.cancel(OWNER, later.id)
    publisher.gate.set()
    assert await running
    assert (await setup.jobs.get(OWNER, later.id)).status == "cancelled"
    assert publisher.folders[stacked] == earlier_adapter  # the earlier job's part again
    assert [name for name, _ in publisher.withdrawn] == [fine_tuned_name(later)]
    assert fine_tuned_name(earlier) in publisher.parts  # untouched


async def test_a_cancelled_job_leaves_a_part_that_another_job_put_since(setup: _Setup) -> None:
    job = await setup.job(await setup.upload([json.dumps(PING)] * 8), n_epochs=1)
    stacked = f"ft:{MODEL}:{owner_tag(OWNER)}:pong"
    publisher = FakePublisher(gate=asyncio.Event())
    running = asyncio.create_task(setup.worker("w1", publisher).run_once())
    await _until(lambda events: any(e.message.startswith("Publishing the adapter") for e in events), setup, job)
    publisher.parts[stacked] = "another job's"  # another worker's job of the same name, put since
    await setup.jobs.cancel(OWNER, job.id)
    assert publisher.gate is not None
    publisher.gate.set()
    assert await running
    assert publisher.parts[stacked] == "another job's"


async def test_a_job_with_no_suffix_is_served_under_its_own_name_only(setup: _Setup) -> None:
    job = await setup.job(await setup.upload([json.dumps(PING)] * 8), suffix=None, n_epochs=1)
    publisher = FakePublisher()
    assert await setup.worker("w1", publisher).run_once()
    done = await setup.jobs.get(OWNER, job.id)
    assert done.fine_tuned_model == f"ft:{MODEL}:{owner_tag(OWNER)}::{job.id}"
    assert list(publisher.published) == [done.fine_tuned_model]


async def test_a_tenant_with_nothing_running_goes_before_older_jobs_of_a_busy_one(setup: _Setup) -> None:
    training_file = await setup.upload([json.dumps(PING)])
    first = await setup.job(training_file)
    await setup.job(training_file)  # the same tenant's second job: older than the other tenant's
    other = await setup.job(training_file, owner="tenant-b")
    held = await setup.jobs.claim("w1", 60)
    assert held is not None
    assert held.job.id == first.id
    assert await setup.jobs.advance(held, "running")
    taken = await setup.jobs.claim("w2", 60)
    assert taken is not None
    assert taken.job.id == other.id


async def test_releases_are_no_deaths(setup: _Setup) -> None:
    job = await setup.job(await setup.upload([json.dumps(PING)]))
    for n in range(4):  # more than max_attempts
        claim = await setup.jobs.claim(f"w{n}", 60)
        assert claim is not None
        assert claim.job.id == job.id
        assert await setup.jobs.release(claim)
    released = await setup.jobs.get(OWNER, job.id)
    assert (released.status, released.attempts, released.lost) == ("validating_files", 4, 0)


async def test_a_cancel_reaches_a_running_job_within_its_heartbeat(setup: _Setup) -> None:
    job = await setup.job(await setup.upload([json.dumps(PING)] * 64), n_epochs=50, batch_size=1)
    publisher = FakePublisher()
    running = asyncio.create_task(setup.worker("w1", publisher, lease_s=0.6).run_once())
    await _until(lambda events: any(event.type == "metrics" for event in events), setup, job)
    await setup.jobs.cancel(OWNER, job.id)
    assert await asyncio.wait_for(running, 5)  # stopped within the heartbeat (0.2 s) and a step
    cancelled = await setup.jobs.get(OWNER, job.id)
    assert cancelled.status == "cancelled"
    assert publisher.published == {}
    assert not (setup.folder / job.id).exists()  # its checkpoints are gone with it


async def test_a_stopped_worker_releases_its_job_and_another_resumes_it_exactly(setup: _Setup) -> None:
    lines = [
        json.dumps(
            {"messages": [{"role": "user", "content": f"say {n}"}, {"role": "assistant", "content": f"{n} {n}"}]}
        )
        for n in range(20)
    ]
    training_file = await setup.upload(lines)
    unbroken_job = await setup.job(training_file, n_epochs=4, batch_size=4)
    unbroken = FakePublisher()
    assert await setup.worker("w0", unbroken).run_once()

    job = await setup.job(training_file, n_epochs=4, batch_size=4)
    stopping = asyncio.Event()
    recorded = setup.jobs.save_checkpoint

    async def stopping_after_step_8(claim: Any, step: int, path: str, metrics: dict[str, Any]) -> Any:
        saved = await recorded(claim, step, path, metrics)
        if step == 8:
            stopping.set()  # as a SIGTERM would, while step 9 trains
        return saved

    setup.jobs.save_checkpoint = stopping_after_step_8  # type: ignore[method-assign]
    assert await setup.worker("w1", FakePublisher()).run_once(stopping)
    setup.jobs.save_checkpoint = recorded  # type: ignore[method-assign]
    released = await setup.jobs.get(OWNER, job.id)
    assert (released.status, released.worker) == ("running", None)
    resumed = FakePublisher()
    assert await setup.worker("w2", resumed).run_once()
    done = await setup.jobs.get(OWNER, job.id)
    assert done.status == "succeeded"
    messages = [event.message for event in await _events(setup, job)]
    assert "Released by worker w1, which is stopping" in messages
    assert any(message.startswith("Resuming from the checkpoint at step-") for message in messages)
    ours = resumed.published[str(done.fine_tuned_model)]
    theirs = next(iter(unbroken.published.values()))  # the same data, seed and hyperparameters, never stopped
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)
    assert done.trained_tokens == (await setup.jobs.get(OWNER, unbroken_job.id)).trained_tokens


async def test_a_fresh_engine_gets_the_newest_adapters_back(setup: _Setup) -> None:
    training_file = await setup.upload([json.dumps(PING)] * 8)
    first = FakePublisher()
    jobs = [await setup.job(training_file, n_epochs=1) for _ in range(3)]
    for _ in jobs:
        assert await setup.worker("w1", first).run_once()
    names = [str((await setup.jobs.get(OWNER, job.id)).fine_tuned_model) for job in jobs]
    shutil.rmtree(setup.folder / jobs[1].id)  # its files lost: nothing to load
    restarted = FakePublisher()  # an engine that started afresh
    stacked = f"ft:{MODEL}:{owner_tag(OWNER)}:pong"
    # At most three names: the newest job's two, then the oldest's own (its stacked name is the newest's).
    assert await setup.worker("w2", restarted).restore(limit=3) == 3
    assert list(restarted.published) == [names[0], stacked, names[2]]  # the newest loaded last
    for name, trained_as in ((names[2], names[2]), (stacked, names[2]), (names[0], names[0])):
        weights = first.published[trained_as]
        assert all(torch.equal(restarted.published[name][key], tensor) for key, tensor in weights.items())
    assert restarted.folders[stacked] == setup.folder / jobs[2].id / "attempt-1" / "adapter"
    assert await setup.worker("w3", restarted).restore(limit=3) == 0  # what the region has is not put again


async def test_a_success_the_database_cannot_confirm_leaves_the_parts_for_the_next_claim(setup: _Setup) -> None:
    job = await setup.job(await setup.upload([json.dumps(PING)] * 8), n_epochs=1)
    publisher = FakePublisher()
    advance = setup.jobs.advance

    async def database_gone_at_success(claim: Any, status: str, **fields: Any) -> bool:
        if status == "succeeded":
            raise ConnectionResetError("the database went away")
        return await advance(claim, status, **fields)

    setup.jobs.advance = database_gone_at_success  # type: ignore[method-assign]
    with pytest.raises(Exception, match=job.id):  # released, and said why
        await setup.worker("w1", publisher).run_once()
    setup.jobs.advance = advance  # type: ignore[method-assign]
    released = await setup.jobs.get(OWNER, job.id)
    assert (released.status, released.worker) == ("running", None)
    assert publisher.withdrawn == []  # whether it succeeded is not known: its parts stay
    assert len(publisher.parts) == 2
    assert await setup.worker("w2", publisher).run_once()  # its next claim publishes again
    assert (await setup.jobs.get(OWNER, job.id)).status == "succeeded"


async def test_a_take_back_that_meets_errors_still_leaves_the_job_as_it_ended(setup: _Setup) -> None:
    job = await setup.job(await setup.upload([json.dumps(PING)] * 8), n_epochs=1)
    publisher = FakePublisher(gate=asyncio.Event())

    async def database_gone(job: Any, limit: int) -> Any:
        raise ConnectionResetError("the database went away")

    setup.jobs.served_alike = database_gone  # type: ignore[method-assign]
    running = asyncio.create_task(setup.worker("w1", publisher).run_once())
    await _until(lambda events: any(e.message.startswith("Publishing the adapter") for e in events), setup, job)
    await setup.jobs.cancel(OWNER, job.id)
    assert publisher.gate is not None
    publisher.gate.set()
    assert await running
    assert (await setup.jobs.get(OWNER, job.id)).status == "cancelled"
    assert publisher.parts == {}  # no previous part known: its own withdrawn
