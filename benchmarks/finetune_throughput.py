"""Benchmark: our LoRA training loop (finetune/training.py) against Transformers' `Trainer` with
PEFT, on the same model, data and hyperparameters, in one run.

    python -m benchmarks.finetune_throughput [--examples 256] [--rounds 2] [--recipe switchyard-small-v1]

The model is a built-in recipe (random weights; `switchyard-small-v1`, 23 M parameters, makes
the compute dominate). The data: chats of varied lengths, encoded once by our encoder (the
template rendering, assistant-only labels) so both loops train on identical batches; ours
also reads and encodes them from the JSONL file as it goes, as a worker does. Both: LoRA rank
8 on every linear layer, AdamW, batch 8, one epoch, no checkpoints. Rounds alternate the two,
so the machine's drift hits them alike. Tokens/s counts every token of every batch, padding
excluded.
"""

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from engines.builtin_model import RECIPES, ensure_builtin_model
from finetune.examples import IGNORE, ExampleEncoder
from finetune.training import Plan, train

BATCH = 8
LEARNING_RATE = 1e-3


class _Quiet:
    def step(self, step: int, metrics: dict[str, float]) -> None:
        return None

    def checkpoint(self, step: int, path: Path, metrics: dict[str, float]) -> None:
        return None

    def stopped(self) -> bool:
        return False


def _examples(count: int) -> list[dict[str, Any]]:
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "five", "wizards", "box"]
    examples = []
    for n in range(count):
        question = " ".join(words[(n + k) % len(words)] for k in range(8 + n % 24))
        answer = " ".join(words[(n * 3 + k) % len(words)] for k in range(16 + n % 48))
        examples.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]})
    return examples


def _ours(model: Path, data: Path, count: int, work: Path) -> float:
    plan = Plan(
        base_model=model,
        training_file=data,
        examples=count,
        n_epochs=1,
        batch_size=BATCH,
        learning_rate=LEARNING_RATE,
        lora_rank=8,
        lora_alpha=16,
        seed=1,
        max_length=2048,
        checkpoint_every=10**9,
    )
    started = time.perf_counter()
    train(plan, work, _Quiet())
    return time.perf_counter() - started


def _trainer(model_path: Path, encoded: list[dict[str, list[int]]], work: Path) -> float:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    def collate(batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(example["input_ids"]) for example in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, example in enumerate(batch):
            length = len(example["input_ids"])
            ids[row, :length] = torch.tensor(example["input_ids"])
            labels[row, :length] = torch.tensor(example["labels"])
            mask[row, :length] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    started = time.perf_counter()
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(base, lora)
    arguments = TrainingArguments(
        output_dir=str(work),
        per_device_train_batch_size=BATCH,
        num_train_epochs=1,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.01,
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    Trainer(model=model, args=arguments, train_dataset=encoded, data_collator=collate).train()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--recipe", default="switchyard-small-v1", choices=sorted(RECIPES))
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    work = Path(tempfile.mkdtemp(prefix="ft-bench-"))
    model = ensure_builtin_model(work, RECIPES[args.recipe])
    examples = _examples(args.examples)
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(example) + "\n" for example in examples))
    from transformers import AutoTokenizer

    encoder = ExampleEncoder(AutoTokenizer.from_pretrained(model), 2048)
    encoded = [encoder.encode(example, n + 1) for n, example in enumerate(examples)]
    tokens = sum(len(example.input_ids) for example in encoded)
    rows = [{"input_ids": example.input_ids, "labels": example.labels} for example in encoded]
    seconds: dict[str, list[float]] = {"ours": [], "Trainer + PEFT": []}
    for round_ in range(args.rounds):
        seconds["ours"].append(_ours(model, data, args.examples, work / f"ours-{round_}"))
        seconds["Trainer + PEFT"].append(_trainer(model, rows, work / f"trainer-{round_}"))
        print(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in seconds.items()), flush=True)
    print(f"\n{args.examples} examples, {tokens} tokens, batch {BATCH}, one epoch, {args.recipe}\n")
    print("| loop | seconds (rounds) | tokens/s | of Trainer + PEFT |")
    print("|---|---|---|---|")
    theirs = tokens / statistics.mean(seconds["Trainer + PEFT"])
    for name, values in seconds.items():
        rate = tokens / statistics.mean(values)
        rounds = ", ".join(f"{value:.1f}" for value in values)
        print(f"| {name} | {statistics.mean(values):.1f} ({rounds}) | {rate:,.0f} | {rate / theirs:.2f} |")


if __name__ == "__main__":
    main()
