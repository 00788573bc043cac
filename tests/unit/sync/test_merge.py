"""Stacking adapters (sync/merge.py): exact ΣwᵢsᵢBᵢAᵢ per module, PEFT's own `cat` on the
model's logits, byte-identical output, and a clear refusal of what is not a LoRA adapter."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

from engines.base import InvalidRequest
from engines.transformers.adapters import AdapterStore
from harness.adapters import make_lora_adapter, quiet_peft
from sync.merge import CONFIG, WEIGHTS, AdapterPart, merge_adapters


@pytest.fixture(scope="module")
def parts(builtin_model: Path, tmp_path_factory: pytest.TempPathFactory) -> list[AdapterPart]:
    root = tmp_path_factory.mktemp("merge")
    first = make_lora_adapter(builtin_model, root / "first", rank=8, seed=1)
    second = make_lora_adapter(builtin_model, root / "second", rank=4, seed=2)
    # A third that targets q_proj only, with another alpha: it contributes zeros to v_proj.
    third = root / "third"
    shutil.copytree(make_lora_adapter(builtin_model, root / "third-source", rank=2, seed=3), third)
    tensors = {k: v for k, v in load_file(str(third / WEIGHTS)).items() if "v_proj" not in k}
    save_file(tensors, str(third / WEIGHTS))
    config = json.loads((third / CONFIG).read_text())
    (third / CONFIG).write_text(json.dumps(config | {"target_modules": ["q_proj"], "lora_alpha": 6}))
    return [AdapterPart(first, 1.0), AdapterPart(second, 0.5), AdapterPart(third, 2.0)]


def _update(folder: Path, module: str) -> torch.Tensor:
    """The adapter's own ΔW for `module` (float64): scaling · B A."""
    config = json.loads((folder / CONFIG).read_text())
    tensors = load_file(str(folder / WEIGHTS))
    a, b = tensors.get(module + ".lora_A.weight"), tensors.get(module + ".lora_B.weight")
    if a is None or b is None:
        return torch.zeros(())
    update: torch.Tensor = (config["lora_alpha"] / config["r"]) * b.double() @ a.double()
    return update


def test_the_stack_is_the_weighted_sum_of_the_updates(parts: list[AdapterPart], tmp_path: Path) -> None:
    rank = merge_adapters(parts, tmp_path / "merged", base_model="switchyard-tiny-v1")
    assert rank == 8 + 4 + 2
    merged = load_file(str(tmp_path / "merged" / WEIGHTS))
    modules = sorted({key.rsplit(".lora_", 1)[0] for key in merged})
    assert any("v_proj" in m for m in modules)
    assert any("q_proj" in m for m in modules)
    config = json.loads((tmp_path / "merged" / CONFIG).read_text())
    assert (config["r"], config["lora_alpha"], config["target_modules"]) == (14, 14, ["q_proj", "v_proj"])
    for module in modules:
        stacked = merged[module + ".lora_B.weight"].double() @ merged[module + ".lora_A.weight"].double()
        expected = torch.stack([part.weight * _update(part.folder, module).expand_as(stacked) for part in parts]).sum(0)
        assert torch.allclose(stacked, expected, atol=1e-5), module
        assert stacked.abs().max() > 0.01  # the check above compares something


def test_the_merged_adapter_acts_as_pefts_own_cat(
    parts: list[AdapterPart], builtin_model: Path, tmp_path: Path
) -> None:
    two = parts[:2]  # PEFT's cat needs the same target modules in every adapter
    merge_adapters(two, tmp_path / "merged", base_model=str(builtin_model))
    tokens = torch.tensor([[1, 15, 27, 99, 3, 42]])
    with quiet_peft(), torch.no_grad():
        ours = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(builtin_model), str(tmp_path / "merged"))
        theirs = PeftModel.from_pretrained(
            LlamaForCausalLM.from_pretrained(builtin_model), str(two[0].folder), adapter_name="p0"
        )
        theirs.load_adapter(str(two[1].folder), adapter_name="p1")
        theirs.add_weighted_adapter(["p0", "p1"], [p.weight for p in two], "cat", combination_type="cat")
        theirs.set_adapter("cat")
        base = LlamaForCausalLM.from_pretrained(builtin_model)(tokens).logits
        ours_logits, theirs_logits = ours(tokens).logits, theirs(tokens).logits
    assert not torch.allclose(ours_logits, base, atol=1e-3)  # the adapters change the model
    assert torch.allclose(ours_logits, theirs_logits, atol=1e-4)


def test_our_engine_loads_the_merged_adapter(parts: list[AdapterPart], builtin_model: Path, tmp_path: Path) -> None:
    merge_adapters(parts, tmp_path / "merged", base_model=str(builtin_model))
    store = AdapterStore(LlamaForCausalLM.from_pretrained(builtin_model), max_loras=2, max_lora_rank=16)
    with quiet_peft():
        store.load("stacked", str(tmp_path / "merged"), in_use=set())
    assert store.paths() == {"stacked": str(tmp_path / "merged")}
    narrow = AdapterStore(LlamaForCausalLM.from_pretrained(builtin_model), max_loras=2, max_lora_rank=8)
    with pytest.raises(InvalidRequest, match="rank 14"):  # the stack's rank is the sum of the parts'
        narrow.load("stacked", str(tmp_path / "merged"), in_use=set())


def test_every_merge_of_the_same_parts_writes_the_same_bytes(parts: list[AdapterPart], tmp_path: Path) -> None:
    digests = set()
    for attempt in range(2):
        out = tmp_path / f"merged-{attempt}"
        merge_adapters(parts, out, base_model="switchyard-tiny-v1")
        digests.add(tuple(hashlib.sha256((out / name).read_bytes()).hexdigest() for name in (CONFIG, WEIGHTS)))
    assert len(digests) == 1
    merge_adapters(list(reversed(parts)), tmp_path / "reversed", base_model="switchyard-tiny-v1")
    reordered = hashlib.sha256((tmp_path / "reversed" / WEIGHTS).read_bytes()).hexdigest()
    assert reordered not in {d[1] for d in digests}  # the order is part of the recipe


def test_what_is_not_a_lora_adapter_is_refused(parts: list[AdapterPart], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"adapter_config\.json"):
        merge_adapters([AdapterPart(tmp_path / "empty", 1.0)], tmp_path / "out", base_model="m")
    not_lora = tmp_path / "ia3"
    shutil.copytree(parts[0].folder, not_lora)
    (not_lora / CONFIG).write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(ValueError, match="not a LoRA adapter"):
        merge_adapters([AdapterPart(not_lora, 1.0)], tmp_path / "out", base_model="m")
    truncated = tmp_path / "truncated"
    shutil.copytree(parts[0].folder, truncated)
    data = (truncated / WEIGHTS).read_bytes()
    (truncated / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors"):
        merge_adapters([AdapterPart(truncated, 1.0)], tmp_path / "out", base_model="m")
    with pytest.raises(ValueError, match="nothing"):
        merge_adapters([], tmp_path / "out", base_model="m")
