"""The load test harness: a short locust run through the OpenAI SDK against the real gateway
and engine, its SLO check passing, and failing the run when an objective is breached (the
objectives' checks alone: tests/unit/loadtests/test_slo.py)."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness.servers import ROOT, ServerProcess
from tests.conftest import MODEL


def _locust(gateway: ServerProcess, tmp_path: Path, slo: Path) -> tuple[subprocess.CompletedProcess[str], Any]:
    report = tmp_path / "report.json"
    # --stop-timeout: at the time limit users finish the request in hand, so a stream whose
    # first token was counted (TTFT) is counted too, instead of being killed before its end.
    command = [
        sys.executable, "-m", "locust", "-f", "loadtests/locustfile.py", "--headless", "--only-summary",
        "-u", "4", "-r", "4", "-t", "6s", "--stop-timeout", "10", "--host", gateway.url, "--model", MODEL,
        "--max-tokens", "8", "--slo", str(slo), "--report-json", str(report),
    ]  # fmt: skip
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    return run, json.loads(report.read_text())


def test_a_short_run_meets_the_slo(gateway: ServerProcess, tmp_path: Path) -> None:
    run, report = _locust(gateway, tmp_path, ROOT / "loadtests" / "slo.yaml")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SLO met" in run.stdout
    rows = report["rows"]
    assert rows["chat"]["requests"] > 0
    assert rows["chat"]["failures"] == 0
    assert rows["chat stream"]["requests"] > 0
    assert rows["chat stream"]["failures"] == 0
    assert rows["TTFT"]["requests"] + report["streams"]["no_content"] == rows["chat stream"]["requests"]
    assert rows["TTFT"]["p95_ms"] <= rows["chat stream"]["p95_ms"]
    assert report["streams"]["completed"] == rows["chat stream"]["requests"]
    assert report["streams"]["truncated"] == report["streams"]["hung"] == 0


def test_a_breached_objective_fails_the_run(gateway: ServerProcess, tmp_path: Path) -> None:
    strict = tmp_path / "slo.yaml"
    strict.write_text("ttft_p95_ms: 0.001\nlatency_p99_ms: 60000\nerror_rate: 0.01\n")
    run, _ = _locust(gateway, tmp_path, strict)
    assert run.returncode == 1
    assert "SLO breached: p95 TTFT" in run.stdout
