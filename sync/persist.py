"""The registry state on disk, crash-safe: written whole to a temporary file, flushed, and
renamed over the old one (a crash leaves the old state or the new, never half of one)."""

import json
import os
from pathlib import Path

from sync import crdt
from sync.crdt import State

__all__ = ["load_state", "save_state"]


def load_state(path: Path) -> State:
    """The saved state, or an empty one on first start."""
    if not path.exists():
        return State()
    return crdt.decode(json.loads(path.read_text()))


def save_state(path: Path, state: State) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    with temporary.open("w") as file:
        json.dump(crdt.encode(state), file, separators=(",", ":"), sort_keys=True)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)
