"""`/v1/fine_tuning/jobs` wire models, as OpenAI's API has them (LoRA's rank and alpha are
this gateway's extensions of `hyperparameters`)."""

import base64
import hashlib
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "FineTuningJob",
    "FineTuningJobCheckpoint",
    "FineTuningJobEvent",
    "JobCreateRequest",
    "JobError",
    "JobHyperparameters",
    "Page",
    "MAX_MODEL_NAME",
    "fine_tuned_name",
    "is_fine_tuned",
    "owned_by",
    "owner_tag",
    "stacked_name",
]

Auto = Literal["auto"]

FINE_TUNED_PREFIX = "ft:"
MAX_MODEL_NAME = 128  # what a sync sidecar accepts as an adapter's name
_NAME_PART = re.compile(r"[^A-Za-z0-9_.-]")


def owner_tag(tenant: str) -> str:
    """The tenant as a fine-tuned model's name carries it: 16 characters of a hash (80 bits) of
    its subject, the same in every region, that no other subject hashes to. Whose a model is
    can so be told from its name alone, with no database. It is not a secret: whoever can guess
    a subject can check it against a name."""
    digest = hashlib.sha256(b"fine-tuned-model-owner\0" + tenant.encode("utf-8", "surrogatepass")).digest()
    return base64.b32encode(digest[:10]).decode("ascii").lower()


def _base_part(base: str) -> str:
    """The base model as a name part: `/` written `--` (`Qwen/Qwen2.5-0.5B-Instruct` gives
    `Qwen--Qwen2.5-0.5B-Instruct`, as the Hugging Face cache writes it), so two organizations'
    models of one name stay apart; any other character than letters, digits, `_`, `.` and `-`
    made `-`, with a short hash of the whole id then (and for an id with a `--` of its own), so
    `m:v1` and `m-v1`, `a/b` and `a--b` stay apart too."""
    part = base.replace("/", "--")
    clean = _NAME_PART.sub("-", part)
    if clean == part and "--" not in base:  # (an id with a `--` of its own could be another's `/`)
        return clean
    return f"{clean}-{hashlib.sha256(base.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def fine_tuned_name(base: str, owner: str, suffix: str | None, job_id: str) -> str:
    """`ft:<base>:<owner tag>:<suffix>:<job id>` (OpenAI's shape, the organization being the
    owner's tag): the model name a fine-tuning job's adapter alone is served as."""
    return f"{FINE_TUNED_PREFIX}{_base_part(base)}:{owner_tag(owner)}:{suffix or ''}:{job_id}"


def stacked_name(base: str, owner: str, suffix: str | None) -> str | None:
    """`ft:<base>:<owner tag>:<suffix>`: the name every job of `owner` on `base` with `suffix`
    contributes to, in its region; it serves the stacked merge of every region's latest
    contribution. None without a suffix (such a job shares nothing)."""
    return f"{FINE_TUNED_PREFIX}{_base_part(base)}:{owner_tag(owner)}:{suffix}" if suffix else None


def is_fine_tuned(model: str) -> bool:
    """Whether `model` names a fine-tuned adapter (which only its owner may use)."""
    return model.startswith(FINE_TUNED_PREFIX)


def owned_by(model: str, tenant: str, tag: str | None = None) -> bool:
    """Whether `model` is one of `tenant`'s fine-tuned models (a job's or a stacked name): its
    owner's tag is `tenant`'s (`tag`, when the caller has it already). Any other `ft:` name is
    nobody's."""
    parts = model.split(":")
    return len(parts) in (4, 5) and parts[0] + ":" == FINE_TUNED_PREFIX and parts[2] == (tag or owner_tag(tenant))


class JobHyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_epochs: Auto | Annotated[int, Field(ge=1, le=50)] = "auto"
    batch_size: Auto | Annotated[int, Field(ge=1, le=256)] = "auto"
    learning_rate_multiplier: Auto | Annotated[float, Field(gt=0, le=10)] = "auto"
    lora_rank: int = Field(default=8, ge=1, le=64)
    lora_alpha: int = Field(default=16, ge=1, le=512)


class SupervisedMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hyperparameters: JobHyperparameters = Field(default_factory=JobHyperparameters)


class Method(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["supervised"]  # dpo and reinforcement are not trained here
    supervised: SupervisedMethod = Field(default_factory=SupervisedMethod)


class JobCreateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=256)
    training_file: str = Field(min_length=1, max_length=64)
    validation_file: str | None = Field(default=None, min_length=1, max_length=64)
    hyperparameters: JobHyperparameters | None = None  # the older form of method.supervised's
    method: Method | None = None
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    suffix: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    integrations: list[Any] | None = Field(default=None, max_length=0)  # none are offered


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: dict[str, Any]
    model: str
    organization_id: str
    result_files: list[str] = Field(default_factory=list)
    seed: int
    status: Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[Any] | None = None
    metadata: dict[str, str] | None = None
    method: dict[str, Any]
    suffix: str | None = None


class FineTuningJobEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] | None = None


class FineTuningJobCheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, Any]
    step_number: int


class Page(BaseModel):
    object: Literal["list"] = "list"
    data: list[Any]
    has_more: bool
