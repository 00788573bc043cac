"""A fine-tuning worker: claims jobs, validates their files, trains, publishes, and says so.

One job at a time. A claim is a lease the worker renews every third of it (its heartbeat); the
renewal fails once the job is cancelled, finished, or another worker took it after a lapse,
and the worker then stops training at the next step and leaves the job as it is. A job claimed
again after its worker died resumes from its last recorded checkpoint. A worker asked to stop
(SIGTERM) stops at the next step and releases its claim, so another worker resumes the job at
once rather than after the lease.

A job's files: `validating_files` reads every line, renders it with the base model's chat
template and counts its tokens (a line over the context length fails the job, naming the
line), then `queued`, `running` (training in a thread, its losses as `metrics` events and its
checkpoints as records), publishing (the adapter made servable in this region), `succeeded`
with `fine_tuned_model` set. Anything that goes wrong fails the job with an error that says
what, never a stack trace.
"""

import asyncio
import contextlib
import logging
import math
import shutil
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune.datasets import DatasetError
from finetune.files import FileStore
from finetune.jobs import Claim, JobStore
from finetune.publish import NotServable, Publisher, Superseded
from finetune.schema import Job
from finetune.training import Plan, Stopped, Trained, train
from protocol import fine_tuning

__all__ = ["BaseModel", "Worker", "fine_tuned_name", "resolve_plan", "stacked_name"]

log = logging.getLogger(__name__)

AUTO_BATCH_SIZE = 8
AUTO_EPOCH_EXAMPLES = 512  # `auto` epochs: enough to see about this many examples (1 to 10)
PUBLISH_BACKOFF_MAX_S = 60.0
METRICS_EVENTS = 200  # at most about this many `metrics` events a job (and one every step of short ones)


@dataclass(frozen=True)
class BaseModel:
    """A base model this worker can train: its served name, its folder, its context length."""

    name: str
    path: Path
    max_length: int


def fine_tuned_name(job: Job) -> str:
    """The model name a job's adapter alone is served as: `ft:<base>:<owner tag>:<suffix>:<job id>`."""
    return fine_tuning.fine_tuned_name(job.model, job.owner, job.suffix, job.id)


def stacked_name(job: Job) -> str | None:
    """The name the job's adapter is also this region's contribution to, with the other
    regions' stacked on it: `ft:<base>:<owner tag>:<suffix>`; None for a job with no suffix."""
    return fine_tuning.stacked_name(job.model, job.owner, job.suffix)


def resolve_plan(
    job: Job,
    model: BaseModel,
    training: Path,
    examples: int,
    validation: Path | None,
    *,
    base_learning_rate: float,
    checkpoint_steps: int,
) -> Plan:
    """The job's hyperparameters with `auto` resolved (documented in the README)."""
    wanted: dict[str, Any] = job.hyperparameters
    epochs = wanted.get("n_epochs", "auto")
    batch = wanted.get("batch_size", "auto")
    multiplier = wanted.get("learning_rate_multiplier", "auto")
    n_epochs = min(10, max(1, math.ceil(AUTO_EPOCH_EXAMPLES / examples))) if epochs == "auto" else int(epochs)
    batch_size = min(AUTO_BATCH_SIZE, examples) if batch == "auto" else min(int(batch), examples)
    steps_per_epoch = math.ceil(examples / batch_size)
    return Plan(
        base_model=model.path,
        training_file=training,
        examples=examples,
        n_epochs=n_epochs,
        batch_size=batch_size,
        learning_rate=base_learning_rate * (1.0 if multiplier == "auto" else float(multiplier)),
        lora_rank=int(wanted.get("lora_rank", 8)),
        lora_alpha=int(wanted.get("lora_alpha", 16)),
        seed=job.seed,
        max_length=model.max_length,
        checkpoint_every=max(1, min(steps_per_epoch, checkpoint_steps)),
        validation_file=validation,
    )


class _Unsettled(Exception):
    """The database failed as the job's success was written and cannot tell whether it was:
    the job is released (its next claim publishes again), its parts left in place."""


class _JobFailed(Exception):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.error = {"code": code, "message": message, "param": param}


class _Bridge:
    """Training's progress (told on the training thread) carried to the job's records on the
    event loop. A checkpoint waits until it is recorded; the losses do not: one writer records
    them in order (at most about `METRICS_EVENTS` a job), and `drained` waits for it."""

    def __init__(self, jobs: JobStore, claim: Claim, total: int, stop: threading.Event, lease_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._lease_s = lease_s
        self._jobs, self._claim, self._total = jobs, claim, total
        self._every = max(1, total // METRICS_EVENTS)
        self._stop = stop  # set by the heartbeat or a shutdown: training stops at the next step
        self._losses: asyncio.Queue[tuple[str, dict[str, float]] | None] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write(), name=f"metrics-{claim.job.id}")

    def step(self, step: int, metrics: dict[str, float]) -> None:
        if step % self._every and step != self._total:
            return
        data = {**metrics, "total_steps": self._total}
        message = f"Step {step}/{self._total}: training loss={metrics['train_loss']:.4f}"
        self._loop.call_soon_threadsafe(self._losses.put_nowait, (message, data))

    async def drained(self) -> None:
        """Return once every loss told so far is recorded (or could not be)."""
        await self._losses.put(None)
        await self._writer

    async def _write(self) -> None:
        while (item := await self._losses.get()) is not None:
            message, data = item
            try:
                await self._jobs.note(self._claim, message, data=data)
            except Exception as error:  # the database away: a lost point on a loss chart
                log.warning("could not record a metrics event of job %s: %s", self._claim.job.id, error)

    def checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        """Record the checkpoint before training goes on: tried again while the database is
        away, for as long as the lease may last; training stops when it cannot be (the job is
        resumed later, by whichever worker claims it)."""
        data = {**metrics, "total_steps": self._total}
        deadline = time.monotonic() + self._lease_s
        while not self._stop.is_set():
            saving = self._jobs.save_checkpoint(self._claim, step, str(path), data)
            try:
                recorded = asyncio.run_coroutine_threadsafe(saving, self._loop).result()
            except Exception as error:
                if time.monotonic() > deadline:
                    log.warning("could not record the checkpoint at step %d: %s; stopping", step, error)
                    self._stop.set()
                    return
                time.sleep(0.5)
                continue
            if recorded is None:
                self._stop.set()  # the claim no longer holds: nothing more of this run counts
            return

    def stopped(self) -> bool:
        return self._stop.is_set()


class Worker:
    def __init__(
        self,
        jobs: JobStore,
        files: FileStore,
        models: Mapping[str, BaseModel],
        publisher: Publisher,
        folder: Path,
        *,
        name: str,
        lease_s: float = 30.0,
        poll_s: float = 1.0,
        checkpoint_steps: int = 50,
        base_learning_rate: float = 1e-3,
        publish_timeout_s: float = 600.0,
        publish_backoff_s: float = 5.0,
    ) -> None:
        self._jobs, self._files, self._models, self._publisher = jobs, files, models, publisher
        self._folder = folder
        self.name = name
        self._lease_s, self._poll_s = lease_s, poll_s
        self._checkpoint_steps, self._base_learning_rate = checkpoint_steps, base_learning_rate
        self._publish_timeout_s, self._publish_backoff_s = publish_timeout_s, publish_backoff_s

    async def restore(self, limit: int) -> int:
        """Publish again what the region's engine or sidecar lacks of the newest succeeded jobs
        whose files are here, at most `limit` names in all (a job's own name and its stacked
        name count two, as an engine holds two): an engine that started afresh (the embedded
        one, after a restart) holds none of them, and a sidecar none of the names a rename
        (migration 0006) gave. A stacked name gets its newest job's adapter. How many names
        were put."""
        known = await self._publisher.known()
        chosen: dict[str, tuple[Job, Path]] = {}  # name -> the newest job served as it
        for job in await self._jobs.served(self._models, limit):
            adapter = await self._adapter_of([job])
            if adapter is None:
                continue
            for name in _names(job):
                if name not in chosen and len(chosen) < limit:
                    chosen[name] = (job, adapter)
        restored = 0
        for name, (job, adapter) in reversed(chosen.items()):  # the newest loaded last
            if name in known:
                continue
            try:
                await self._publisher.put(name, adapter, job.model)
                restored += 1
            except NotServable as error:
                log.warning("could not restore %s: %s", name, error)
        return restored

    async def run(self, stopping: asyncio.Event) -> None:
        """Claim and run jobs until `stopping` is set (a job in progress stops at its next step)."""
        while not stopping.is_set():
            try:
                ran = await self.run_once(stopping)
            except Exception:  # the database away, say: logged, and tried again after a pause
                log.exception("worker %s could not claim or run a job", self.name)
                ran = False
            if not ran:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), self._poll_s)

    async def run_once(self, stopping: asyncio.Event | None = None) -> bool:
        """Claim one job and run it to its end (or to a stop); whether there was one."""
        claim = await self._jobs.claim(self.name, self._lease_s, models=frozenset(self._models))
        if claim is None:
            return False
        stop = threading.Event()
        heartbeat = asyncio.create_task(self._heartbeat(claim, stop), name=f"heartbeat-{claim.job.id}")
        watch = asyncio.create_task(self._watch(stopping, stop)) if stopping is not None else None
        try:
            await self._run(claim, stop)
        except _JobFailed as failed:
            log.info("job %s failed: %s", claim.job.id, failed)
            if await self._jobs.advance(claim, "failed", error=failed.error):  # still ours: its files go
                await asyncio.to_thread(shutil.rmtree, self._folder / claim.job.id, True)
        except Stopped:
            if stopping is not None and stopping.is_set():
                await self._jobs.release(claim)
                log.info("job %s released for another worker to resume", claim.job.id)
            elif await self._jobs.status(claim.job.id) == "cancelled":
                await asyncio.to_thread(shutil.rmtree, self._folder / claim.job.id, True)
        except Exception:
            # The database away, say: the job goes back for any worker to resume, not left to
            # its lease (where it would count as this worker's death).
            with contextlib.suppress(Exception):
                await self._jobs.release(claim)
            raise
        finally:
            heartbeat.cancel()
            if watch is not None:
                watch.cancel()
        return True

    async def _run(self, claim: Claim, stop: threading.Event) -> None:
        job = claim.job
        model = self._models.get(job.model)
        if model is None:
            raise _JobFailed("model_not_available", f"this region's workers cannot train {job.model}", "model")
        if len(fine_tuned_name(job)) > fine_tuning.MAX_MODEL_NAME:  # (a job recorded before the gateway checked it)
            message = f"the fine-tuned model's name would be over {fine_tuning.MAX_MODEL_NAME} characters"
            raise _JobFailed("invalid_suffix", f"{message} (its base model's and its suffix together)", "suffix")
        training = self._files.path(job.training_file)
        validation = self._files.path(job.validation_file) if job.validation_file else None
        if job.status == "validating_files":
            await self._jobs.note(claim, f"Validating training file: {job.training_file}")
        examples = await asyncio.to_thread(_validate, model, training, validation, stop)
        plan = resolve_plan(
            job,
            model,
            training,
            examples,
            validation,
            base_learning_rate=self._base_learning_rate,
            checkpoint_steps=self._checkpoint_steps,
        )
        if job.status == "validating_files" and not await self._jobs.advance(claim, "queued"):
            raise Stopped
        # The hyperparameters as resolved (`auto` no more): what the job shows, and what a resume uses.
        resolved = dict(job.hyperparameters) | {
            "n_epochs": plan.n_epochs,
            "batch_size": plan.batch_size,
            "learning_rate_multiplier": plan.learning_rate / self._base_learning_rate,
        }
        if job.status != "running" and not await self._jobs.advance(claim, "running", hyperparameters=resolved):
            raise Stopped
        bridge = _Bridge(self._jobs, claim, plan.total_steps, stop, self._lease_s)
        # A folder of this claim's own: a worker whose lease lapsed unnoticed never writes
        # over the files of the one that took the job (a resume reads the recorded path).
        folder = self._folder / job.id / f"attempt-{claim.attempt}"
        resume = await self._resumable(job)
        if resume is not None:
            await self._jobs.note(claim, f"Resuming from the checkpoint at {resume.name}")
        try:
            trained = await self._train(plan, folder, bridge, resume)
        finally:
            await bridge.drained()
        await self._publish(claim, trained, stop)

    async def _publish(self, claim: Claim, trained: Trained, stop: threading.Event) -> None:
        """Make the adapter the region's part of the job's name and of its stacked name, then
        say the job succeeded. While the engine or sidecar is away it is tried again, backing
        off, for `publish_timeout_s` (a refusal of the adapter fails the job at once). A job that
        fails, is cancelled or meets any error meanwhile takes its parts back (its stacked
        name's goes back to the region's previous job's, unless another job's part came since);
        one whose success the database could not confirm keeps them for its next claim."""
        job, names = claim.job, _names(claim.job)
        if not await self._jobs.renew(claim, self._lease_s):
            raise Stopped  # cancelled while it trained its last steps
        await self._jobs.note(claim, f"Publishing the adapter as {' and '.join(names)}")
        tokens: dict[str, str] = {}  # each name's part, as put
        try:
            await self._put(job, names, trained.adapter, stop, tokens)
            succeeded = await self._succeed(claim, names[0], trained)
        except _Unsettled:
            raise
        except Exception:
            await self._take_back(claim, tokens)
            raise
        if not succeeded:
            await self._take_back(claim, tokens)
            raise Stopped

    async def _put(
        self, job: Job, names: list[str], adapter: Path, stop: threading.Event, tokens: dict[str, str]
    ) -> None:
        """Every name's part put and listed, tried again while that may pass; each part's token
        into `tokens` as it is put."""
        deadline, delay = time.monotonic() + self._publish_timeout_s, self._publish_backoff_s
        while True:
            try:
                for name in names:
                    tokens[name] = await self._publisher.put(name, adapter, job.model)
                for name in names:
                    await self._publisher.wait_listed(name)
                return
            except NotServable as error:
                log.warning("publishing %s failed: %s", names[0], error)
                if error.lasting or time.monotonic() + delay > deadline:
                    reason = f"the adapter was trained but could not be served: {error.reason}"
                    raise _JobFailed("publish_failed", reason) from None
            if await asyncio.to_thread(stop.wait, delay):  # cancelled, or the worker is stopping
                raise Stopped
            delay = min(delay * 2, PUBLISH_BACKOFF_MAX_S)

    async def _succeed(self, claim: Claim, name: str, trained: Trained) -> bool:
        """Say the job succeeded; whether it did (False: cancelled, or no longer this claim's).
        _Unsettled when the database failed and cannot tell whether the write was made."""
        try:
            return await self._jobs.advance(
                claim, "succeeded", fine_tuned_model=name, trained_tokens=trained.trained_tokens
            )
        except Exception as error:
            try:
                status = await self._jobs.status(claim.job.id)
            except Exception:
                raise _Unsettled(claim.job.id) from error
            if status in ("running", None):
                raise _Unsettled(claim.job.id) from error
            return status == "succeeded"

    async def _take_back(self, claim: Claim, tokens: Mapping[str, str]) -> None:
        """Undo what `_publish` put, each step on its own (a failure is logged, never raised:
        the job's own outcome is what counts): the job's own name, while it is the part put
        (or, its put's answer lost, while the claim holds), and its part of the stacked name,
        made the region's previous job's again (whose adapter is here) or none, while still its."""
        job = claim.job
        own, stacked = fine_tuned_name(job), stacked_name(job)
        try:
            if own in tokens:
                await self._publisher.withdraw(own, tokens[own])
            elif await self._jobs.renew(claim, self._lease_s):
                await self._publisher.unpublish(own)
        except Exception as error:
            log.warning("could not take back %s: %s", own, error)
        if stacked is None or stacked not in tokens:
            return
        try:
            previous = await self._adapter_of(await self._jobs.served_alike(job, limit=8))
        except Exception as error:
            log.warning("could not find the region's previous part of %s: %s", stacked, error)
            previous = None
        try:
            if previous is None:
                await self._publisher.withdraw(stacked, tokens[stacked])
            else:
                await self._publisher.put(stacked, previous, job.model, replaces=tokens[stacked])
        except Superseded:
            pass  # another job's part since: it stays
        except Exception as error:
            log.warning("could not take back this job's part of %s: %s", stacked, error)

    async def _adapter_of(self, jobs: list[Job]) -> Path | None:
        """The trained adapter of the first of `jobs` whose files are here."""
        for job in jobs:
            adapter = self._folder / job.id / f"attempt-{job.attempts}" / "adapter"
            if await asyncio.to_thread(adapter.is_dir):
                return adapter
        return None

    async def _train(self, plan: Plan, folder: Path, bridge: _Bridge, resume: Path | None) -> Trained:
        try:
            return await asyncio.to_thread(train, plan, folder, bridge, resume)
        except DatasetError as error:  # a line the validation let through (the file changed?)
            raise _JobFailed("invalid_training_file", str(error), "training_file") from None
        except Stopped:
            raise
        except Exception as error:
            log.exception("training failed")
            raise _JobFailed("training_failed", f"training stopped with an error: {type(error).__name__}") from None

    async def _resumable(self, job: Job) -> Path | None:
        """The job's last recorded checkpoint, when its folder is still there."""
        checkpoint = await self._jobs.last_checkpoint(job.id)
        if checkpoint is None or not await asyncio.to_thread(Path(checkpoint.path).is_dir):
            return None
        return Path(checkpoint.path)

    async def _heartbeat(self, claim: Claim, stop: threading.Event) -> None:
        """Renew the lease every third of it; stop the job's training when it no longer holds
        (cancelled, or taken after a lapse) or cannot be renewed before it lapses."""
        renewed = asyncio.get_running_loop().time()
        while not stop.is_set():
            await asyncio.sleep(self._lease_s / 3)
            left = self._lease_s - (asyncio.get_running_loop().time() - renewed)
            try:  # a renewal that hangs must not outlast the lease it renews
                held = await asyncio.wait_for(self._jobs.renew(claim, self._lease_s), max(left, 0.1))
            except Exception as error:  # the database away: go on while the lease lasts
                log.warning("could not renew the lease of job %s: %s", claim.job.id, error)
                held = asyncio.get_running_loop().time() - renewed < self._lease_s * 2 / 3
            else:
                renewed = asyncio.get_running_loop().time()
            if not held:
                log.info("job %s is no longer this worker's (cancelled, or taken over): stopping", claim.job.id)
                stop.set()

    @staticmethod
    async def _watch(stopping: asyncio.Event, stop: threading.Event) -> None:
        await stopping.wait()
        stop.set()


def _names(job: Job) -> list[str]:
    """The job's own name, then its stacked name when it has one."""
    stacked = stacked_name(job)
    return [fine_tuned_name(job)] + ([stacked] if stacked else [])


def _validate(model: BaseModel, training: Path, validation: Path | None, stop: threading.Event) -> int:
    """The training file's examples, after every line of both files was checked against the
    model's chat template and context length; _JobFailed naming the line otherwise, Stopped
    when `stop` is set."""
    from transformers import AutoTokenizer  # the worker's thread: a few hundred ms, once a job

    from finetune.examples import ExampleEncoder, read_examples

    encoder = ExampleEncoder(AutoTokenizer.from_pretrained(model.path), model.max_length)
    counts = {}
    for param, path in (("training_file", training), ("validation_file", validation)):
        if path is None:
            continue
        if not path.is_file():
            raise _JobFailed(f"invalid_{param}", f"the {param.replace('_', ' ')} is gone (deleted?)", param)
        count, line, title = 0, 0, param.replace("_", " ").capitalize()
        try:
            for line, _, example in read_examples(path):
                if stop.is_set():
                    raise Stopped
                encoder.encode(example, line)
                count += 1
        except DatasetError as error:
            raise _JobFailed(f"invalid_{param}", f"{title}: {error}", param) from None
        except (Stopped, _JobFailed):
            raise
        except Exception as error:  # the template refused the chat (roles that do not alternate, say)
            reason = f"the base model's chat template could not render it ({type(error).__name__}: {error})"
            raise _JobFailed(f"invalid_{param}", f"{title}: line {line}: {reason[:500]}", param) from None
        if count == 0:
            raise _JobFailed(f"invalid_{param}", f"the {param.replace('_', ' ')} has no examples", param)
        counts[param] = count
    return counts["training_file"]
