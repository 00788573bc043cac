"""LoRA adapters on the engine's model: checked, loaded with PEFT, evicted least recently used first.

Every method runs on the scheduler's thread, between decode steps: PEFT changes
the model's modules, which must not happen under a forward pass. Adapters are
checked against the base model before PEFT touches it, so a wrong adapter is a
400 and leaves the model as it was.
"""

import json
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import torch
from peft import PeftModel
from safetensors import safe_open
from transformers import PreTrainedModel

from engines.base import AdapterNotFound, EngineOverloaded, InvalidRequest

__all__ = ["BASE", "AdapterStore"]

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch
_WEIGHTS = "adapter_model.safetensors"
_CONFIG = "adapter_config.json"


class AdapterStore:
    def __init__(self, base: PreTrainedModel, *, max_loras: int, max_lora_rank: int) -> None:
        self._base = base
        self._peft: PeftModel | None = None
        self._paths: OrderedDict[str, str] = OrderedDict()  # least recently used first
        # What other threads read: replaced whole after each change, never mutated.
        self._published: Mapping[str, str] = MappingProxyType({})
        self.max_loras = max_loras
        self.max_lora_rank = max_lora_rank

    @property
    def model(self) -> torch.nn.Module:
        return self._peft if self._peft is not None else self._base

    @property
    def mixed(self) -> bool:
        """Whether forward passes take `adapter_names` (once PEFT wraps the model)."""
        return self._peft is not None

    def paths(self) -> Mapping[str, str]:
        """Loaded adapters, name to path; safe to read from any thread."""
        return self._published

    def touch(self, name: str) -> None:
        self._paths.move_to_end(name)

    def load(self, name: str, path: str, *, in_use: set[str], replace: bool = False) -> None:
        if name in self._paths:
            if not replace:
                raise InvalidRequest(
                    f"The lora adapter '{name}' has already been loaded. "
                    "If you want to load the adapter in place, set 'load_inplace' to True.",
                    "lora_name",
                )
            if name in in_use:
                raise EngineOverloaded()
            self.unload(name)
        self._check(Path(path))
        while len(self._paths) >= self.max_loras:
            self._evict(in_use)
        if self._peft is None:
            self._peft = PeftModel.from_pretrained(self._base, path, adapter_name=name)
        else:
            self._peft.load_adapter(path, adapter_name=name)
        self._peft.eval()
        self._paths[name] = path
        self._published = MappingProxyType(dict(self._paths))

    def unload(self, name: str) -> None:
        if name not in self._paths or self._peft is None:
            raise AdapterNotFound(f"The lora adapter '{name}' cannot be found.", "lora_name")
        del self._paths[name]
        if self._paths:
            self._peft.delete_adapter(name)
            self._peft.set_adapter(next(iter(self._paths)))  # PEFT needs some active adapter
        else:  # the last one: take PEFT's layers out again, back to the plain base model
            self._base = self._peft.unload()
            self._peft = None
        self._published = MappingProxyType(dict(self._paths))

    def _evict(self, in_use: set[str]) -> None:
        idle = next((n for n in self._paths if n not in in_use), None)
        if idle is None:  # every loaded adapter serves a request right now
            raise EngineOverloaded()
        self.unload(idle)

    def _check(self, folder: Path) -> None:
        """Refuse what PEFT would fail on half-way: missing files, too high a rank, shapes of another model."""
        if not folder.is_dir():
            raise InvalidRequest(
                f"No adapter at '{folder}': the path must be a folder on the engine's host.", "lora_path"
            )
        try:
            config = json.loads((folder / _CONFIG).read_text())
        except (OSError, ValueError) as exc:
            raise InvalidRequest(f"'{folder}' is not a PEFT adapter: {exc}", "lora_path") from exc
        if config.get("peft_type") != "LORA":
            raise InvalidRequest(f"'{folder}' is a {config.get('peft_type')} adapter, not LoRA.", "lora_path")
        rank = int(config.get("r", 0))
        if rank > self.max_lora_rank:
            raise InvalidRequest(
                f"The adapter's rank {rank} is above this engine's maximum {self.max_lora_rank}.", "lora_path"
            )
        if not (folder / _WEIGHTS).exists():
            raise InvalidRequest(f"'{folder}' has no {_WEIGHTS}.", "lora_path")
        modules = dict(self._base.named_modules())
        with safe_open(str(folder / _WEIGHTS), framework="pt") as weights:
            for key in weights.keys():  # noqa: SIM118 - safe_open is not a mapping
                self._check_tensor(key, tuple(weights.get_slice(key).get_shape()), modules)

    @staticmethod
    def _check_tensor(key: str, shape: tuple[int, ...], modules: dict[str, torch.nn.Module]) -> None:
        for part in (".lora_A.", ".lora_B."):
            if part not in key:
                continue
            target = key.split(part)[0].removeprefix("base_model.model.")
            module = modules.get(target)
            module = getattr(module, "base_layer", module)  # already wrapped by an earlier adapter
            if not isinstance(module, torch.nn.Linear):
                raise InvalidRequest(
                    f"The adapter targets '{target}', which this base model does not have.", "lora_path"
                )
            expected = module.in_features if part == ".lora_A." else module.out_features
            actual = shape[1] if part == ".lora_A." else shape[0]
            if actual != expected:
                raise InvalidRequest(
                    f"The adapter was trained for another base model: '{target}' has {expected} features here, "
                    f"{actual} in the adapter.",
                    "lora_path",
                )
