"""`python -m demo --check`: two regions started on this machine walk the tour (nearest region,
affinity, adapter sync between the regions, spill-over when a region's engine stops), each step
checked, and every process stops after it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.servers import ROOT

pytestmark = pytest.mark.timeout(600)


def test_the_demo_walks_its_tour(builtin_model: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    env["SWITCHYARD_DATA_DIR"] = str(builtin_model.parent.parent)  # the model the session built
    run = subprocess.run(
        [sys.executable, "-m", "demo", "--check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=540
    )
    assert run.returncode == 0, run.stdout + run.stderr
    steps = [line for line in run.stdout.splitlines() if line.startswith("ok  ")]
    assert [step.split(":")[0] for step in steps] == [
        "ok  nearest region",
        "ok  affinity",
        "ok  adapter sync",
        "ok  spill-over",
    ]
