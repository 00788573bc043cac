"""`/v1/fine_tuning/jobs`: fine-tuning jobs as OpenAI's API has them (scope `finetune`), and
the original platform's `POST /fine-tune` as an alias of job creation.

A job is checked before it is recorded: its base model is one an engine pool serves (not an
adapter), its files are the caller's own datasets, its hyperparameters are in range. Workers
claim it from the database (finetune/worker.py). Each job belongs to the tenant that made it.
"""

import secrets
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from app.api.body import parse_body, read_json_body
from app.api.deps import GatewayDep, scoped, tenant_of
from app.auth import Principal
from app.errors import InvalidRequest, NotFound, TooManyJobs
from app.finetuning import database_errors
from finetune.files import UnknownFile
from finetune.jobs import NewJob, NotCancellable, TooManyUnfinished, UnknownJob
from finetune.records import UnknownCursor, new_id
from finetune.schema import Checkpoint, Event, Job
from protocol import (
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobEvent,
    JobCreateRequest,
    JobError,
    JobHyperparameters,
    Page,
)
from protocol.fine_tuning import MAX_MODEL_NAME, fine_tuned_name

__all__ = ["job_object", "router"]

router = APIRouter(dependencies=[Depends(database_errors)])
Caller = Annotated[Principal | None, scoped("finetune")]
Limit = Annotated[int, Query(ge=1, le=100)]


def job_object(job: Job) -> FineTuningJob:
    hyperparameters = dict(job.hyperparameters)
    return FineTuningJob(
        id=job.id,
        created_at=job.created_at,
        error=None if job.error is None else JobError.model_validate(job.error),
        fine_tuned_model=job.fine_tuned_model,
        finished_at=job.finished_at,
        hyperparameters=hyperparameters,
        model=job.model,
        organization_id=job.owner,
        seed=job.seed,
        status=job.status,
        trained_tokens=job.trained_tokens,
        training_file=job.training_file,
        validation_file=job.validation_file,
        metadata=job.job_metadata,
        method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
        suffix=job.suffix,
    )


def _event_object(event: Event) -> FineTuningJobEvent:
    return FineTuningJobEvent(
        id=event.id,
        created_at=event.created_at,
        level=event.level,
        message=event.message,
        type=event.type,
        data=event.data,
    )


def _checkpoint_object(checkpoint: Checkpoint, job: Job) -> FineTuningJobCheckpoint:
    return FineTuningJobCheckpoint(
        id=checkpoint.id,
        created_at=checkpoint.created_at,
        fine_tuned_model_checkpoint=f"{job.fine_tuned_model or job.model}:ckpt-step-{checkpoint.step}",
        fine_tuning_job_id=job.id,
        metrics=checkpoint.metrics,
        step_number=checkpoint.step,
    )


@router.post("/v1/fine_tuning/jobs")
@router.post("/fine-tune")
async def create(request: Request, gateway: GatewayDep, caller: Caller) -> FineTuningJob:
    finetuning = gateway.finetuning
    await finetuning.ready()
    ask = parse_body(await read_json_body(request, gateway.settings.max_body_bytes), JobCreateRequest)
    if ask.hyperparameters is not None and ask.method is not None:
        raise InvalidRequest("Give `method.supervised.hyperparameters` or `hyperparameters`, not both.", param="method")
    chosen = ask.method.supervised.hyperparameters if ask.method is not None else ask.hyperparameters
    owner = tenant_of(caller, None)
    bases = {str(card["id"]) for card in gateway.registry.model_cards(every_replica=True) if not card.get("parent")}
    if ask.model not in bases:
        raise InvalidRequest(
            f"`{ask.model}` is not a base model served here; fine-tune one of: {', '.join(sorted(bases)[:5])}.",
            param="model",
        )
    _check_name_length(ask.model, owner, ask.suffix)
    for param, file_id in (("training_file", ask.training_file), ("validation_file", ask.validation_file)):
        if file_id is None:
            continue
        try:
            record = await finetuning.files.get(owner, file_id)
        except UnknownFile:
            raise InvalidRequest(f"No such file: `{file_id}`.", param=param) from None
        if record.purpose != "fine-tune":
            raise InvalidRequest(f"`{file_id}` was not uploaded with purpose `fine-tune`.", param=param)
    new = NewJob(
        owner=owner,
        model=ask.model,
        training_file=ask.training_file,
        validation_file=ask.validation_file,
        seed=ask.seed if ask.seed is not None else secrets.randbelow(2**31),
        suffix=ask.suffix,
        hyperparameters=chosen or JobHyperparameters(),
        metadata=ask.metadata,
    )
    limit = gateway.settings.max_active_jobs_per_tenant
    try:
        return job_object(await finetuning.jobs.create(new, most_unfinished=limit))
    except TooManyUnfinished:
        raise TooManyJobs(limit) from None


def _check_name_length(model: str, owner: str, suffix: str | None) -> None:
    """InvalidRequest when the job's model name would be longer than a sidecar takes: a job
    that trained for hours must not fail as it is published."""
    length = len(fine_tuned_name(model, owner, suffix, new_id("ftjob")))
    if length > MAX_MODEL_NAME:
        room = len(suffix or "") - (length - MAX_MODEL_NAME)
        shorter_base = "a base model of a shorter name" + (", with no suffix" if suffix else "")
        advice = f"a suffix of at most {room} characters" if room > 0 else shorter_base
        raise InvalidRequest(
            f"The fine-tuned model's name would be {length} characters, over {MAX_MODEL_NAME}: choose {advice}.",
            param="suffix" if room > 0 else "model",
        )


@router.get("/v1/fine_tuning/jobs")
async def list_jobs(gateway: GatewayDep, caller: Caller, limit: Limit = 20, after: str | None = None) -> Page:
    await gateway.finetuning.ready()
    try:
        jobs = await gateway.finetuning.jobs.page(tenant_of(caller, None), limit=limit + 1, after=after)
    except UnknownCursor:
        raise InvalidRequest(f"`after` names no job of yours: `{after}`.", param="after") from None
    return Page(data=[job_object(job) for job in jobs[:limit]], has_more=len(jobs) > limit)


@router.get("/v1/fine_tuning/jobs/{job_id}")
async def retrieve(job_id: str, gateway: GatewayDep, caller: Caller) -> FineTuningJob:
    await gateway.finetuning.ready()
    return job_object(await _job(gateway, caller, job_id))


@router.post("/v1/fine_tuning/jobs/{job_id}/cancel")
async def cancel(job_id: str, gateway: GatewayDep, caller: Caller) -> FineTuningJob:
    await gateway.finetuning.ready()
    try:
        return job_object(await gateway.finetuning.jobs.cancel(tenant_of(caller, None), job_id))
    except UnknownJob:
        raise _no_job(job_id) from None
    except NotCancellable as finished:  # 400, as OpenAI answers it
        raise InvalidRequest(
            f"The job has already {finished.status}; it cannot be cancelled.", param="job_id"
        ) from None


@router.get("/v1/fine_tuning/jobs/{job_id}/events")
async def events(job_id: str, gateway: GatewayDep, caller: Caller, limit: Limit = 20, after: str | None = None) -> Page:
    await gateway.finetuning.ready()
    job = await _job(gateway, caller, job_id)
    try:
        found = await gateway.finetuning.jobs.events(job, limit=limit + 1, after=after)
    except UnknownCursor:
        raise _no_cursor(after) from None
    return Page(data=[_event_object(event) for event in found[:limit]], has_more=len(found) > limit)


@router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints")
async def checkpoints(
    job_id: str, gateway: GatewayDep, caller: Caller, limit: Limit = 10, after: str | None = None
) -> Page:
    await gateway.finetuning.ready()
    job = await _job(gateway, caller, job_id)
    try:
        found = await gateway.finetuning.jobs.checkpoints(job, limit=limit + 1, after=after)
    except UnknownCursor:
        raise _no_cursor(after) from None
    data = [_checkpoint_object(checkpoint, job) for checkpoint in found[:limit]]
    return Page(data=data, has_more=len(found) > limit)


async def _job(gateway: GatewayDep, caller: Principal | None, job_id: str) -> Job:
    try:
        return await gateway.finetuning.jobs.get(tenant_of(caller, None), job_id)
    except UnknownJob:
        raise _no_job(job_id) from None


def _no_cursor(after: str | None) -> InvalidRequest:
    return InvalidRequest(f"`after` names nothing of this job: `{after}`.", param="after")


def _no_job(job_id: str) -> NotFound:
    return NotFound(f"No such fine-tuning job: `{job_id}`.", param="job_id")
