"""Stacking LoRA adapters into one (PEFT's `cat`): exact, and byte-identical in every region.

Part i has A_i (r_i by in), B_i (out by r_i) per target module and scaling s_i = alpha_i / r_i
(alpha_i / √r_i with rsLoRA). The merged adapter has rank Σ r_i, A = [A_1; A_2; ...] and
B = [w_1 s_1 B_1, w_2 s_2 B_2, ...], and lora_alpha = Σ r_i (scaling 1), so
B A = Σ w_i s_i B_i A_i exactly: each part's update, weighted. (Averaging the A's and the B's
separately gives Σ_i Σ_j B_i A_j: cross terms nobody trained.) A module a part does not
target gets zero rows and columns from it.

Only concatenation and one multiplication by a scalar per element, in float32, in the
recipe's order: no matrix product, whose summation order varies by machine. Files are
written with sorted keys and no timestamps, so every region makes the same bytes.
"""

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

__all__ = ["CONFIG", "WEIGHTS", "AdapterPart", "NotAnAdapter", "Unmergeable", "merge_adapters", "read_adapter"]

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
_A, _B = ".lora_A.weight", ".lora_B.weight"


class Unmergeable(ValueError):
    """Parts that do not stack into one adapter; the message says why."""


class NotAnAdapter(Unmergeable):
    """A folder that is not a LoRA adapter in safetensors."""


@dataclass(frozen=True, slots=True)
class AdapterPart:
    folder: Path
    weight: float


@dataclass(frozen=True, slots=True)
class _Adapter:
    base_model: str
    rank: int
    scaling: float
    a: dict[str, torch.Tensor]  # module path -> A
    b: dict[str, torch.Tensor]


def read_adapter(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The adapter's config and tensors; NotAnAdapter when it is not a LoRA adapter in safetensors."""
    try:
        config = json.loads((folder / CONFIG).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise NotAnAdapter(f"no readable {CONFIG}: {exc}") from exc
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise NotAnAdapter(
            f"not a LoRA adapter (peft_type {config.get('peft_type') if isinstance(config, dict) else None!r})"
        )
    try:
        tensors = load_file(str(folder / WEIGHTS))
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise NotAnAdapter(f"no readable {WEIGHTS}: {exc}") from exc
    return config, tensors


def _load(folder: Path) -> _Adapter:
    config, tensors = read_adapter(folder)
    rank, alpha = config.get("r"), config.get("lora_alpha", config.get("r"))
    if not isinstance(rank, int) or rank < 1 or not isinstance(alpha, int | float):
        raise Unmergeable(f"rank {rank!r} and lora_alpha {alpha!r} are not a positive integer and a number")
    if config.get("rank_pattern") or config.get("alpha_pattern"):
        raise Unmergeable("adapters with per-module ranks or alphas are not merged")
    scaling = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    a = {key.removesuffix(_A): t for key, t in tensors.items() if key.endswith(_A)}
    b = {key.removesuffix(_B): t for key, t in tensors.items() if key.endswith(_B)}
    if set(a) != set(b) or len(a) + len(b) != len(tensors):
        raise Unmergeable("the adapter's tensors are not lora_A/lora_B pairs")
    for module in a:
        if a[module].shape[0] != rank or b[module].shape[1] != rank:
            raise Unmergeable(f"{module}: shapes {tuple(a[module].shape)}, {tuple(b[module].shape)} for rank {rank}")
    return _Adapter(str(config.get("base_model_name_or_path") or ""), rank, scaling, a, b)


def merge_adapters(parts: Sequence[AdapterPart], out: Path, *, base_model: str) -> int:
    """Write the stack of `parts` (in this order) to `out`; its rank."""
    if not parts:
        raise Unmergeable("nothing to merge")
    adapters = [_load(part.folder) for part in parts]
    modules = sorted(set().union(*(adapter.a for adapter in adapters)))
    shapes: dict[str, tuple[int, int]] = {}
    for adapter in adapters:
        for module in adapter.a:
            shape = (adapter.a[module].shape[1], adapter.b[module].shape[0])  # (in, out)
            if shapes.setdefault(module, shape) != shape:
                raise Unmergeable(f"{module}: the adapters disagree on its shape")
    tensors: dict[str, torch.Tensor] = {}
    for module in modules:
        fan_in, fan_out = shapes[module]
        blocks_a, blocks_b = [], []
        for part, adapter in zip(parts, adapters, strict=True):
            if module in adapter.a:
                blocks_a.append(adapter.a[module].to(torch.float32))
                blocks_b.append(adapter.b[module].to(torch.float32) * (part.weight * adapter.scaling))
            else:
                blocks_a.append(torch.zeros(adapter.rank, fan_in))
                blocks_b.append(torch.zeros(fan_out, adapter.rank))
        tensors[module + _A] = torch.cat(blocks_a, dim=0).contiguous()
        tensors[module + _B] = torch.cat(blocks_b, dim=1).contiguous()
    rank = sum(adapter.rank for adapter in adapters)
    out.mkdir(parents=True, exist_ok=True)
    save_file(dict(sorted(tensors.items())), str(out / WEIGHTS), metadata={"format": "pt"})
    targets = sorted({module.rsplit(".", 1)[-1] for module in modules})
    config = {
        "base_model_name_or_path": base_model,
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": rank,  # scaling 1: the parts' scalings are in B
        "target_modules": targets,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "inference_mode": True,
    }
    (out / CONFIG).write_text(json.dumps(config, sort_keys=True, indent=2) + "\n")
    return rank
