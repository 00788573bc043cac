"""PEFT LoRA adapters for the built-in model, made on the spot for tests."""

import warnings
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM


def make_lora_adapter(base_model: Path, folder: Path, *, rank: int = 8, seed: int = 0) -> Path:
    """A rank-`rank` adapter on q_proj/v_proj with random weights, so it visibly changes the output."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_model)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM"
    )
    with warnings.catch_warnings():
        # PEFT still reads transformers' deprecated `is_gradient_checkpointing`.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(model, config)
    with torch.no_grad():  # PEFT's random init is small; make the adapter's effect unmistakable
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.mul_(50.0)
    peft_model.save_pretrained(str(folder))
    return folder
