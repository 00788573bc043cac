"""PEFT LoRA adapters for the built-in model, made on the spot for tests and benchmarks."""

import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

__all__ = ["make_foreign_adapter", "make_lora_adapter", "quiet_peft"]


@contextmanager
def quiet_peft() -> Iterator[None]:
    """PEFT still reads transformers' deprecated `is_gradient_checkpointing`; that warning is not ours."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def make_lora_adapter(base_model: Path, folder: Path, *, rank: int = 8, seed: int = 0) -> Path:
    """A rank-`rank` adapter on q_proj/v_proj with random weights, so it visibly changes the output."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_model)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM"
    )
    with quiet_peft():
        peft_model = get_peft_model(model, config)
    with torch.no_grad():  # PEFT's random init is small; make the adapter's effect unmistakable
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.mul_(50.0)
    peft_model.save_pretrained(str(folder))
    return folder


def make_foreign_adapter(valid: Path, folder: Path) -> Path:
    """A copy of `valid` whose weights fit a wider model (hidden 512): a LoRA for another base."""
    folder.mkdir(parents=True)
    shutil.copy(valid / "adapter_config.json", folder / "adapter_config.json")
    with safe_open(str(valid / "adapter_model.safetensors"), framework="pt") as weights:
        tensors = {}
        for key in weights.keys():  # noqa: SIM118 - safe_open is not a mapping
            rank = weights.get_slice(key).get_shape()[0 if "lora_A" in key else 1]
            tensors[key] = torch.zeros((rank, 512) if "lora_A" in key else (512, rank))
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder
