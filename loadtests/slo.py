"""Service-level objectives for a load test run, and the check that fails a run on a breach."""

from dataclasses import dataclass
from typing import Any

__all__ = ["SHED", "TTFT", "WARM_UP", "Slo", "evaluate"]

# Rows of a run's report besides `chat` and `chat stream` (loadtests/locustfile.py).
SHED = "shed"  # 429/503 answers with Retry-After
TTFT = "TTFT"  # time to the first content event of a stream
WARM_UP = "warm-up"  # prefix of the rows of requests started during the warm-up


@dataclass(frozen=True)
class Slo:
    ttft_p95_ms: float  # streamed requests: time to the first content event
    latency_p99_ms: float  # every answered request, to its last byte
    error_rate: float  # failed requests (not sheds) over all requests but sheds
    shed_rate: float = 1.0  # 429/503 with Retry-After over all requests (1: no limit)


def evaluate(slo: Slo, report: dict[str, Any]) -> list[str]:
    """What the run breached, one line each; empty when every objective was met."""
    rows = report["rows"]
    answered = [rows[name] for name in ("chat", "chat stream") if name in rows]
    total = sum(row["requests"] for row in answered)
    failed = sum(row["failures"] for row in answered)
    shed = rows.get(SHED, {}).get("requests", 0)
    breaches: list[str] = []
    if total == 0:
        return ["no request was answered"]
    if TTFT in rows and rows[TTFT]["p95_ms"] > slo.ttft_p95_ms:
        breaches.append(f"p95 TTFT {rows[TTFT]['p95_ms']:.0f} ms > {slo.ttft_p95_ms:.0f} ms")
    worst_p99 = max(row["p99_ms"] for row in answered)
    if worst_p99 > slo.latency_p99_ms:
        breaches.append(f"p99 latency {worst_p99:.0f} ms > {slo.latency_p99_ms:.0f} ms")
    if failed / total > slo.error_rate:
        breaches.append(f"error rate {failed / total:.2%} > {slo.error_rate:.2%}")
    if shed / (total + shed) > slo.shed_rate:
        breaches.append(f"shed rate {shed / (total + shed):.2%} > {slo.shed_rate:.2%}")
    return breaches
