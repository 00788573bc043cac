"""LoRA training of a causal language model with PEFT, our own loop, resumable exactly.

The loop is short and ours, not Transformers' `Trainer` or TRL's `SFTTrainer`, for what a
worker needs that they make awkward: the dataset streamed from disk a line at a time (memory
bounded whatever the file size, no `datasets` cache), a position in that stream that a resume
seeks to, checkpoints that hold everything an exact resume needs, and a stop asked from outside
(a cancel, a lost lease) honoured between two steps. Its speed against Trainer with PEFT is in
docs/benchmarks.md.

A checkpoint (`step-NNNNNN/` under the job's folder, written aside and renamed into place, so it
is whole or absent) holds the adapter (PEFT's `save_pretrained`: what engines load) and
`state.pt`: the optimizer, the schedule, the RNG states, the step, the tokens trained, and the
data's position (epoch, byte offset). A run resumed from it goes on exactly as the run that wrote
it would have: same batches, same updates, the same adapter at the end.
"""

import math
import random
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from finetune.examples import IGNORE, Encoded, ExampleEncoder, read_examples

__all__ = ["KEEP_CHECKPOINTS", "Plan", "Progress", "Stopped", "Trained", "train"]

KEEP_CHECKPOINTS = 3  # on disk; older ones are removed as new ones are written
VALIDATION_EXAMPLES = 256  # a checkpoint's `valid_loss` is measured on this many (the final one on all)
_STATE = "state.pt"


class Stopped(Exception):
    """Training stopped because `Progress.stopped()` said so (a cancel, a lost lease)."""


@dataclass(frozen=True)
class Plan:
    """What to train: the base model's folder, the data, and the resolved hyperparameters."""

    base_model: Path
    training_file: Path
    examples: int  # lines with an example in the training file
    n_epochs: int
    batch_size: int
    learning_rate: float
    lora_rank: int
    lora_alpha: int
    seed: int
    max_length: int  # tokens an example may have: the served context length
    checkpoint_every: int  # steps
    validation_file: Path | None = None

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.examples / self.batch_size)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.n_epochs


class Progress(Protocol):
    """Told as training goes; called from the training thread."""

    def step(self, step: int, metrics: dict[str, float]) -> None: ...

    def checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        """A whole checkpoint is at `path` (record it before training goes on)."""

    def stopped(self) -> bool: ...


@dataclass
class Trained:
    adapter: Path  # the final adapter's folder
    steps: int
    trained_tokens: int  # assistant tokens learned, over every epoch
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class _Position:
    epoch: int = 0
    offset: int = 0  # bytes of the training file consumed in this epoch


def train(plan: Plan, folder: Path, progress: Progress, resume: Path | None = None) -> Trained:
    """Train `plan` into `folder` (checkpoints, then `adapter/`), from the checkpoint at `resume`
    when given. Raises Stopped when `progress` asks, DatasetError for a line it cannot use."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    torch.manual_seed(plan.seed)
    random.seed(plan.seed)
    tokenizer = AutoTokenizer.from_pretrained(plan.base_model)
    encoder = ExampleEncoder(tokenizer, plan.max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    base = AutoModelForCausalLM.from_pretrained(plan.base_model, dtype=torch.float32)
    lora = LoraConfig(
        r=plan.lora_rank,
        lora_alpha=plan.lora_alpha,
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # PEFT 0.21 still asks Transformers 5 a deprecated question
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        model = get_peft_model(base, lora)
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=plan.learning_rate)
    total = plan.total_steps
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda done: max(0.0, 1.0 - done / total))
    step, tokens, position = 0, 0, _Position()
    if resume is not None:
        step, tokens, position = _restore(resume, model, optimizer, schedule)
    metrics: dict[str, float] = {}
    model.train()
    while step < total and position.epoch < plan.n_epochs:
        for batch, after in _batches(plan, encoder, position):
            if progress.stopped():
                raise Stopped
            loss = model(**_tensors(batch, pad)).loss
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens += sum(example.trained for example in batch)
            position.offset = after
            metrics = {"step": step, "train_loss": float(loss.detach()), "epoch": position.epoch + 1}
            progress.step(step, metrics)
            if step % plan.checkpoint_every == 0 or step == total:
                if progress.stopped():  # no files written for a run that no longer counts
                    raise Stopped
                metrics |= _validation(plan, encoder, model, pad, VALIDATION_EXAMPLES)
                path = _save(folder, model, optimizer, schedule, step, tokens, position)
                progress.checkpoint(step, path, metrics)
        position = _Position(position.epoch + 1, 0)
    adapter = folder / "adapter"
    model.save_pretrained(str(adapter))
    metrics |= {f"full_{key}": value for key, value in _validation(plan, encoder, model, pad, None).items()}
    return Trained(adapter, step, tokens, metrics)


def _batches(plan: Plan, encoder: ExampleEncoder, position: _Position) -> Iterator[tuple[list[Encoded], int]]:
    """The epoch's batches from `position` on, each with the byte offset after its last line.
    The last batch of an epoch may be short."""
    if position.epoch >= plan.n_epochs:
        return
    batch: list[Encoded] = []
    for line, after, example in read_examples(plan.training_file, position.offset):
        batch.append(encoder.encode(example, line))
        if len(batch) == plan.batch_size:
            yield batch, after
            batch = []
    if batch:
        yield batch, plan.training_file.stat().st_size


def _tensors(batch: list[Encoded], pad: int) -> dict[str, torch.Tensor]:
    """The batch right-padded: ids, the attention mask, and labels (IGNORE on padding)."""
    width = max(len(example.input_ids) for example in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, example in enumerate(batch):
        length = len(example.input_ids)
        ids[row, :length] = torch.tensor(example.input_ids)
        labels[row, :length] = torch.tensor(example.labels)
        mask[row, :length] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@torch.no_grad()
def _validation(plan: Plan, encoder: ExampleEncoder, model: PeftModel, pad: int, limit: int | None) -> dict[str, float]:
    """The mean loss a learned token has on the validation file (its first `limit` examples),
    or nothing without one."""
    if plan.validation_file is None:
        return {}
    model.eval()
    total_loss, total_tokens = 0.0, 0
    batch: list[Encoded] = []

    def flush() -> None:
        nonlocal total_loss, total_tokens
        learned = sum(example.trained for example in batch)
        total_loss += float(model(**_tensors(batch, pad)).loss) * learned
        total_tokens += learned

    for seen, (line, _, example) in enumerate(read_examples(plan.validation_file), start=1):
        batch.append(encoder.encode(example, line))
        if len(batch) == plan.batch_size:
            flush()
            batch = []
        if limit is not None and seen >= limit:
            break
    if batch:
        flush()
    model.train()
    return {"valid_loss": total_loss / total_tokens} if total_tokens else {}


def _save(
    folder: Path,
    model: PeftModel,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LambdaLR,
    step: int,
    tokens: int,
    position: _Position,
) -> Path:
    """Write the checkpoint of `step` aside, rename it into place, and remove the oldest ones."""
    final = folder / f"step-{step:06d}"
    aside = folder / f".step-{step:06d}.partial"
    shutil.rmtree(aside, ignore_errors=True)
    model.save_pretrained(str(aside))
    state = {
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
        "step": step,
        "tokens": tokens,
        "epoch": position.epoch,
        "offset": position.offset,
    }
    torch.save(state, aside / _STATE)
    shutil.rmtree(final, ignore_errors=True)  # one a killed run wrote but never recorded
    aside.rename(final)
    for old in sorted(folder.glob("step-*"), key=lambda path: int(path.name.removeprefix("step-")))[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _restore(
    path: Path, model: PeftModel, optimizer: torch.optim.Optimizer, schedule: torch.optim.lr_scheduler.LambdaLR
) -> tuple[int, int, _Position]:
    set_peft_model_state_dict(model, load_file(path / "adapter_model.safetensors"))
    state: dict[str, Any] = torch.load(path / _STATE, weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    return state["step"], state["tokens"], _Position(state["epoch"], state["offset"])
