"""An adapter folder as a registry version: its config and safetensors, checked before anything
serves it (base model, rank, pickled or broken weights, not a LoRA adapter), and materialized."""

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from harness.adapters import make_lora_adapter
from sync import crdt
from sync.adapters import AdapterRefused, materialize, read_version
from sync.blobs import BlobStore, file_sha256
from sync.clock import Timestamp
from sync.merge import CONFIG, WEIGHTS

BASE = "switchyard-tiny-v1"
AT = Timestamp(1, 0, "a")


@pytest.fixture(scope="module")
def adapter(builtin_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lora_adapter(builtin_model, tmp_path_factory.mktemp("adapter") / "a", rank=4)


def test_an_adapter_becomes_a_version_of_its_config_and_safetensors(adapter: Path, tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    version = read_version(adapter, blobs, base_models=[BASE], max_rank=8, base_model=BASE, at=AT)
    assert [f.path for f in version.files] == [CONFIG, WEIGHTS]  # PEFT's README.md is not part of it
    assert (version.base_model, version.rank) == (BASE, 4)
    assert version.digest == crdt.manifest_digest(version.files)
    folder = materialize(version, blobs, tmp_path / "served")
    assert file_sha256(folder / WEIGHTS) == file_sha256(adapter / WEIGHTS)
    assert materialize(version, blobs, tmp_path / "served") == folder  # already there


def test_a_base_model_given_as_its_folder_is_the_same_model(adapter: Path, builtin_model: Path, tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    claimed = json.loads((adapter / CONFIG).read_text())["base_model_name_or_path"]
    assert Path(claimed) == builtin_model  # PEFT records the folder the model was loaded from
    linked = tmp_path / "models-link"
    linked.symlink_to(builtin_model.parent)
    for spelling in (str(builtin_model), str(linked / builtin_model.name), str(builtin_model) + "/"):
        version = read_version(adapter, blobs, base_models=[BASE, spelling], max_rank=8, at=AT)
        assert version.base_model == BASE  # the canonical name, whatever the spelling
    for other in (str(builtin_model.parent), builtin_model.name, "/elsewhere/" + builtin_model.name):
        with pytest.raises(AdapterRefused, match="give that name as `base_model`"):
            read_version(adapter, blobs, base_models=[BASE, other], max_rank=8, at=AT)


def test_adapters_the_engines_must_not_see_are_refused(adapter: Path, tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")

    def refused(folder: Path, match: str, **options: object) -> None:
        settings: dict[str, object] = {"base_models": [BASE], "max_rank": 8, "base_model": BASE, "at": AT}
        with pytest.raises(AdapterRefused, match=match):
            read_version(folder, blobs, **(settings | options))  # type: ignore[arg-type]

    refused(tmp_path / "missing", "no adapter folder")
    refused(adapter, "rank 4 is above", max_rank=2)
    refused(adapter, "base model is 'other'", base_model="other")
    pickled = tmp_path / "pickled"
    shutil.copytree(adapter, pickled)
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04")
    refused(pickled, "pickled weights")
    not_lora = tmp_path / "not-lora"
    shutil.copytree(adapter, not_lora)
    (not_lora / CONFIG).write_text(json.dumps({"peft_type": "PREFIX_TUNING"}))
    refused(not_lora, "not a LoRA adapter")
    truncated = tmp_path / "truncated"
    shutil.copytree(adapter, truncated)
    (truncated / WEIGHTS).write_bytes((adapter / WEIGHTS).read_bytes()[:100])
    refused(truncated, "adapter_model")
    empty = tmp_path / "empty"
    shutil.copytree(adapter, empty)
    save_file({}, str(empty / WEIGHTS))
    refused(empty, "no tensors")
    assert load_file(str(adapter / WEIGHTS))  # the original is untouched
