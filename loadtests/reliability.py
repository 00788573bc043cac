"""Benchmarks of the gateway under overload and under a replica's death, driven by locust.

    python -m loadtests.reliability overload [--seconds 60]
    python -m loadtests.reliability kill [--seconds 40]

Three counting engines (harness/counting_engine.py: `--slots` requests at once, a fixed pace
per token, an execution log that outlives them) behind one gateway whose pools saturate at
the engines' slots, so capacity is known. Locust drives it through the OpenAI SDK
(loadtests/locustfile.py), half the requests streamed.

- `overload`: capacity measured first (closed loop, two users per slot: the queue never
  empties and never fills), then twice that offered for `--seconds` (Poisson arrivals):
  goodput over capacity, shed answers' p99, admitted p99 TTFT against
  loadtests/slo-overload.yaml, and the gateway's memory along the way. Both runs leave out
  their first seconds (`--warmup`: users starting, clients connecting).
- `kill`: paced load with an Idempotency-Key per request; one engine is SIGKILLed a third
  of the way in. One line: faults injected, failed non-streaming requests, how streams
  ended, executions per key, and acknowledged answers lost (every answered key is sent
  again and must replay the same completion).
"""

import argparse
import json
import math
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from harness.servers import ROOT, ServerProcess, free_port
from loadtests.slo import SHED, TTFT, WARM_UP

SLOTS = 4
CHUNK_DELAY_S = 0.025
MAX_TOKENS = 16  # so a request takes 16 x 25 ms = 0.4 s on an engine: 10 req/s per replica
WARMUP_S = 5  # locust starting its users and their clients connecting: outside the figures


class Rig:
    """Three counting engines and a gateway in front of them (timing its shed answers)."""

    def __init__(self, work: Path, *, max_queue: int) -> None:
        self.work = work
        self.executions = work / "executions.log"
        self.engines = [
            ServerProcess(
                "harness.counting_engine",
                ["--port", str(port), "--slots", str(SLOTS), "--chunk-delay-s", str(CHUNK_DELAY_S),
                 "--log", str(self.executions)],
                port=port,
                log_dir=work,
            )
            for port in (free_port(), free_port(), free_port())
        ]  # fmt: skip
        pools = [{"name": "bench", "max_load": SLOTS, "replicas": [e.url for e in self.engines]}]
        port = free_port()
        self.shed_times = work / "shed-times.txt"
        self.gateway = ServerProcess(
            "loadtests.timed_gateway",
            ["--times", str(self.shed_times), "--port", str(port), "--log-level", "warning"],
            port=port,
            log_dir=work,
            env={"SWITCHYARD_POOLS": json.dumps(pools), "SWITCHYARD_MAX_QUEUE": str(max_queue)},
            ready_path="/ready",
        )

    def __enter__(self) -> "Rig":
        for server in [*self.engines, self.gateway]:
            server.wait_ready()
        time.sleep(2.5)  # one probe round: every replica healthy
        return self

    def __exit__(self, *_: object) -> None:
        for server in [self.gateway, *self.engines]:
            server.stop()

    def locust(self, name: str, *, users: int, rate: float, seconds: int, extra: list[str]) -> dict[str, Any]:
        report = self.work / f"{name}.json"
        command = [
            sys.executable, "-m", "locust", "-f", "loadtests/locustfile.py", "--headless", "--only-summary",
            "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--host", self.gateway.url,
            "--model", "counting", "--max-tokens", str(MAX_TOKENS), "--rate", str(rate),
            "--tenants", "8", "--report-json", str(report), *extra,
        ]  # fmt: skip
        run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        print(run.stdout[-3000:], flush=True)
        result: dict[str, Any] = json.loads(report.read_text())
        result["exit_code"] = run.returncode
        return result


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _answered_rps(report: dict[str, Any]) -> float:
    rows = report["rows"]
    done = sum(rows[n]["requests"] - rows[n]["failures"] for n in ("chat", "chat stream") if n in rows)
    return float(done / report["duration_s"])


def _p99(values: list[float]) -> float:
    return values[max(0, math.ceil(0.99 * len(values)) - 1)] if values else math.nan


def overload(seconds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="overload-") as tmp, Rig(Path(tmp), max_queue=16) as rig:
        # Capacity: a closed loop of two users per slot keeps the queue from emptying (so no slot
        # idles between a user's answer and its next request) and never fills it (nothing shed).
        users = 2 * SLOTS * len(rig.engines)
        warmup = ["--warmup", str(WARMUP_S)]
        capacity = _answered_rps(rig.locust("capacity", users=users, rate=0, seconds=20 + WARMUP_S, extra=warmup))
        samples: list[float] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(2.0):
                samples.append(_rss_mb(rig.gateway.process.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rate = 0.5  # Poisson arrivals, a mean 2 s apart per user
        offered_users = round(2 * capacity / rate)
        extra = [*warmup, "--slo", "loadtests/slo-overload.yaml"]
        report = rig.locust("overload", users=offered_users, rate=rate, seconds=seconds + WARMUP_S, extra=extra)
        stop.set()
        rig.gateway.stop()  # its shed times are written as it exits
        inside = sorted(float(line) * 1000 for line in rig.shed_times.read_text().split())
        rows = report["rows"]
        measured = {name: row for name, row in rows.items() if not name.startswith(WARM_UP)}
        warm_up_failures = sum(row["failures"] for name, row in rows.items() if name.startswith(WARM_UP))
        goodput = _answered_rps(report)
        offered = sum(row["requests"] for name, row in measured.items() if name != TTFT) / report["duration_s"]
        shed = measured.get(SHED, {"requests": 0, "p99_ms": None})
        print(
            f"capacity {capacity:.1f} req/s; offered {offered:.1f} req/s ({offered / capacity:.2f}x) by "
            f"{offered_users} users; goodput {goodput:.1f} req/s = {goodput / capacity:.1%} of capacity; "
            f"shed {shed['requests']} answers, p99 {shed['p99_ms']} ms at the client, "
            f"{_p99(inside):.1f} ms inside the gateway; "
            f"admitted TTFT p95 {rows[TTFT]['p95_ms']} ms p99 {rows[TTFT]['p99_ms']} ms; "
            f"latency p99 chat {rows['chat']['p99_ms']} ms, stream {rows['chat stream']['p99_ms']} ms; "
            f"failures {rows['chat']['failures'] + rows['chat stream']['failures']} "
            f"(warm-up {warm_up_failures}); "
            f"gateway RSS MB first/max/last {samples[0]:.0f}/{max(samples):.0f}/{samples[-1]:.0f}; "
            f"SLO {'met' if report['exit_code'] == 0 else 'BREACHED'}"
        )


def kill(seconds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="kill-") as tmp, Rig(Path(tmp), max_queue=256) as rig:
        acknowledged = rig.work / "acknowledged.jsonl"
        victim = rig.engines[1]
        in_flight: list[int] = []

        def kill_one() -> None:
            time.sleep(seconds / 3)
            status = httpx.get(rig.gateway.url + "/status", timeout=5).json()
            replicas = [r for pool in status["pools"] for r in pool["replicas"]]
            in_flight.extend(r["in_flight"] for r in replicas if r["url"] == victim.url)
            victim.process.send_signal(signal.SIGKILL)

        killer = threading.Thread(target=kill_one, daemon=True)
        killer.start()
        extra = ["--idempotency", "--acknowledged", str(acknowledged)]
        report = rig.locust("kill", users=40, rate=2, seconds=seconds, extra=extra)
        killer.join()
        runs = Counter(line.split()[1] for line in rig.executions.read_text().splitlines())
        lost = replayed = 0
        with httpx.Client(base_url=rig.gateway.url, timeout=30) as client:
            for line in acknowledged.read_text().splitlines():
                record = json.loads(line)
                again = client.post("/v1/chat/completions", json=record["body"],
                                    headers={"Idempotency-Key": record["key"]})  # fmt: skip
                same = again.status_code == 200 and again.json()["id"] == record["id"]
                if again.headers.get("idempotent-replayed") == "true" and same:
                    replayed += 1
                else:
                    lost += 1
        rows, streams = report["rows"], report["streams"]
        keys = [key for key in runs if key != "-"]
        print(
            f"faults injected: 1 engine of 3 SIGKILLed at {seconds / 3:.0f} s with {in_flight[0]} request(s) in "
            f"flight; non-streaming: {rows['chat']['requests']} answered, {rows['chat']['failures']} failed; "
            f"streams: {streams['completed']} completed, {streams['error_event']} ended with an error event, "
            f"{streams['truncated']} truncated, {streams['hung']} hung; executions per key: "
            f"{sum(1 for k in keys if runs[k] == 1)} once, {sum(1 for k in keys if runs[k] > 1)} twice or more "
            f"(max {max(runs[k] for k in keys)}); acknowledged answers: {replayed} replayed identical, {lost} lost"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", choices=["overload", "kill"])
    parser.add_argument("--seconds", type=int, default=0, help="length of the main run (default 60 / 40)")
    args = parser.parse_args()
    if args.run == "overload":
        overload(args.seconds or 60)
    else:
        kill(args.seconds or 40)


if __name__ == "__main__":
    main()
