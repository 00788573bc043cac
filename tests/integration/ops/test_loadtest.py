"""The load test harness: a short locust run through the OpenAI SDK against the real gateway
and engine, its SLO check passing, and failing the run when an objective is breached."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.servers import ROOT, ServerProcess
from loadtests.slo import Slo, evaluate
from tests.conftest import MODEL

pytestmark = pytest.mark.slow


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


def _report(**rows: dict[str, Any]) -> dict[str, Any]:
    defaults = {"requests": 0, "failures": 0, "p95_ms": 0.0, "p99_ms": 0.0}
    return {"rows": {name: defaults | row for name, row in rows.items()}}


SLO = Slo(ttft_p95_ms=500, latency_p99_ms=2000, error_rate=0.01, shed_rate=0.1)


def test_each_objective_is_checked() -> None:
    good = _report(chat={"requests": 100, "p99_ms": 900}, TTFT={"requests": 50, "p95_ms": 300})
    assert evaluate(SLO, good) == []
    slow_first_token = _report(chat={"requests": 100}, TTFT={"requests": 50, "p95_ms": 800})
    assert evaluate(SLO, slow_first_token) == ["p95 TTFT 800 ms > 500 ms"]
    slow = _report(chat={"requests": 100}, **{"chat stream": {"requests": 10, "p99_ms": 2500}})
    assert evaluate(SLO, slow) == ["p99 latency 2500 ms > 2000 ms"]
    failing = _report(chat={"requests": 100, "failures": 2})
    assert evaluate(SLO, failing) == ["error rate 2.00% > 1.00%"]
    shedding = _report(chat={"requests": 80}, shed={"requests": 20})
    assert evaluate(SLO, shedding) == ["shed rate 20.00% > 10.00%"]
    assert evaluate(SLO, _report(shed={"requests": 5})) == ["no request was answered"]
