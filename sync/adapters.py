"""An adapter directory as a registry version: its files, checked before anything serves it.

A version is the adapter's `adapter_config.json` and its `.safetensors` files (other files,
such as PEFT's README.md, are not part of it). Refused, with the reason: a folder with
pickled weights (`.bin`, `.pt`, ...), one that is not a LoRA adapter or does not load, a
base model other than the engines', a rank above what the engines take.
"""

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from sync.blobs import BlobStore
from sync.clock import Timestamp
from sync.crdt import FileRef, Version, manifest_digest
from sync.merge import CONFIG, NotAnAdapter, read_adapter

__all__ = ["AdapterRefused", "materialize", "read_version"]

PICKLED = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class AdapterRefused(ValueError):
    """Not an adapter the engines may be given; the message says why."""


def read_version(
    folder: Path,
    blobs: BlobStore,
    *,
    base_models: Sequence[str],
    max_rank: int,
    base_model: str | None = None,
    at: Timestamp,
) -> Version:
    """Check the adapter in `folder`, store its files as blobs, and describe it as a version.

    `base_model`: the base it was trained on, when its config names it otherwise. It must be
    one of `base_models`, or an absolute path to the same folder as one of them (a model
    folder reached through a link); the version records the first of them."""
    try:  # a caller's path: too long, unreadable, or with a NUL byte in it
        names = sorted(p.name for p in folder.iterdir() if p.is_file())
    except (OSError, ValueError) as exc:
        raise AdapterRefused(f"no adapter folder at {folder}: {getattr(exc, 'strerror', None) or exc}") from None
    pickled = [n for n in names if n.endswith(PICKLED)]
    if pickled:
        raise AdapterRefused(f"pickled weights are refused, only safetensors: {', '.join(pickled)}")
    try:
        config, tensors = read_adapter(folder)
    except NotAnAdapter as exc:
        raise AdapterRefused(str(exc)) from exc
    claimed = base_model or str(config.get("base_model_name_or_path") or "")
    if not _same_model(claimed, base_models):
        raise AdapterRefused(
            f"the adapter's base model is {claimed!r}; the engines serve {sorted(base_models)} "
            "(if it was trained on one of them under another name, give that name as `base_model`)"
        )
    rank = config.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise AdapterRefused(f"the adapter's rank {rank!r} is not a positive integer")
    if rank > max_rank:
        raise AdapterRefused(f"the adapter's rank {rank} is above the engines' maximum {max_rank}")
    if not tensors:
        raise AdapterRefused("the adapter has no tensors")
    members = [n for n in names if n == CONFIG or n.endswith(".safetensors")]
    files = tuple(FileRef(name, (folder / name).stat().st_size, blobs.put_file(folder / name)) for name in members)
    return Version(manifest_digest(files), base_models[0], rank, files, at)


def _same_model(claimed: str, base_models: Sequence[str]) -> bool:
    if claimed in base_models:
        return True
    if not os.path.isabs(claimed):  # a hub id or a relative path: only the exact spelling
        return False
    try:
        folder = os.path.realpath(claimed)
    except (OSError, ValueError):  # a NUL byte, or a path too long: no model's folder
        return False
    return any(os.path.isabs(known) and os.path.realpath(known) == folder for known in base_models)


def materialize(version: Version, blobs: BlobStore, destination: Path) -> Path:
    """The version's files as a folder an engine can load (links to the blobs where possible)."""
    if destination.is_dir():
        return destination
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=destination.parent))
    try:
        for ref in version.files:
            target = staging / ref.path
            try:
                os.link(blobs.path(ref.sha256), target)
            except OSError:
                shutil.copyfile(blobs.path(ref.sha256), target)
        os.replace(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return destination
