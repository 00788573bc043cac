"""The registry state on disk: it survives a restart, and a crash mid-write leaves the saved one."""

from pathlib import Path

from sync import crdt
from sync.clock import Timestamp
from sync.merge import CONFIG
from sync.persist import load_state, save_state

BASE = "switchyard-tiny-v1"
AT = Timestamp(1, 0, "a")


def test_the_state_survives_a_restart_and_a_crash_mid_write(tmp_path: Path) -> None:
    path = tmp_path / "state" / "registry.json"
    assert load_state(path) == crdt.State()
    files = (crdt.FileRef(CONFIG, 10, "a" * 64),)
    version = crdt.Version(crdt.manifest_digest(files), BASE, 4, files, AT)
    state = crdt.join(crdt.State(), crdt.publish(crdt.State(), "alpha", version, 1.0, "a", AT))
    save_state(path, state)
    assert load_state(path) == state
    # A crash while writing the next state leaves its temporary file; the saved one stands.
    path.with_suffix(".999.tmp").write_text('{"entries": {"half')
    assert load_state(path) == state
