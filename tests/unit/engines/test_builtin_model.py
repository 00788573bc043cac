"""The built-in model is built offline, deterministically, and loads as a Llama with a chat template."""

import json
from pathlib import Path

from transformers import AutoTokenizer

from engines.builtin_model import BUILTIN_MODEL_NAME, ensure_builtin_model, model_digest


def test_two_builds_are_byte_identical(builtin_model: Path, tmp_path: Path) -> None:
    again = ensure_builtin_model(tmp_path)
    assert again.name == BUILTIN_MODEL_NAME
    assert model_digest(again) == model_digest(builtin_model)


def test_cached_model_is_reused(builtin_model: Path) -> None:
    before = (builtin_model / "model.safetensors").stat().st_mtime_ns
    assert ensure_builtin_model(builtin_model.parent.parent) == builtin_model
    assert (builtin_model / "model.safetensors").stat().st_mtime_ns == before


def test_shape_suits_vllm_and_chat(builtin_model: Path) -> None:
    config = json.loads((builtin_model / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["head_dim"] == 64  # vLLM's CPU attention refuses smaller heads
    tokenizer = AutoTokenizer.from_pretrained(builtin_model)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "héllo"}], add_generation_prompt=True, tokenize=False
    )
    assert text == "<|im_start|>user\nhéllo<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer.encode("héllo wörld", add_special_tokens=False)
    assert tokenizer.decode(ids) == "héllo wörld"
