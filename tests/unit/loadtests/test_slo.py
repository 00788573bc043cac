"""The SLO check of a load test's report: each objective, alone."""

from typing import Any

from loadtests.slo import Slo, evaluate


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
