"""Benchmark: what the gateway adds on top of an instant engine, beside the thinnest pass-through.

    python -m benchmarks.gateway_overhead [--duration 10] [--connections 1 32]

Starts the fake instant engine, the thinnest FastAPI + aiohttp pass-through and
the gateway, and drives each with wrk: non-streaming and streaming chat, one
and 32 connections, without and with a new Idempotency-Key on every request.
The proxy under test gets CPU 0; wrk and the engine share CPU 1. Every figure
comes from the same run, so compare ratios, not absolutes.
Needs `wrk` (Debian: `apt-get install wrk`) and `taskset`.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

from harness.servers import ServerProcess, free_port

KEPT_ANSWERS_BYTES = 8 * 1024**3
# "+key": every request sends a new Idempotency-Key (the gateway claims, runs and keeps it).
MODES = ("json", "sse", "json+key", "sse+key")
BODY = {"model": "instant", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[{body}]]
"""

# A new Idempotency-Key on every request: each is claimed, run and kept, never replayed.
KEYED_LUA = """
counter = 0
request = function()
  counter = counter + 1
  wrk.headers["Idempotency-Key"] = "{prefix}-" .. counter
  return wrk.format()
end
"""


@dataclass(frozen=True)
class Result:
    target: str
    mode: str
    connections: int
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(
    url: str,
    body: dict[str, object],
    connections: int,
    duration: int,
    *,
    keyed: bool = False,
    headers: dict[str, str] | None = None,
) -> tuple[float, float, float, int]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(LUA.format(body=json.dumps(body)))
        for name, value in (headers or {}).items():
            script.write(f'wrk.headers["{name}"] = "{value}"\n')
        if keyed:
            script.write(KEYED_LUA.replace("{prefix}", uuid.uuid4().hex))
    command = ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    output = subprocess.run(
        [*command, "-s", script.name, url + "/v1/chat/completions"], capture_output=True, text=True, check=True
    ).stdout
    os.unlink(script.name)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", output)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", output)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if p50 is None or p99 is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    return rate, _ms(*p50.groups()), _ms(*p99.groups()), int(errors.group(1)) if errors else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 32])
    args = parser.parse_args()
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        sys.exit("needs wrk and taskset: apt-get install wrk util-linux")
    log_dir = Path(tempfile.mkdtemp(prefix="bench-"))

    engine_port = free_port()
    engine = ServerProcess(
        "benchmarks.pinned", ["1", "engines.instant", "--port", str(engine_port)], port=engine_port, log_dir=log_dir
    )
    pass_port, gw_port = free_port(), free_port()
    passthrough = ServerProcess(
        "benchmarks.pinned",
        ["0", "benchmarks.passthrough", "--upstream", engine.url, "--port", str(pass_port)],
        port=pass_port,
        log_dir=log_dir,
        ready_path="/docs",
    )
    gateway = ServerProcess(
        "benchmarks.pinned",
        ["0", "app", "--port", str(gw_port), "--log-level", "warning"],
        port=gw_port,
        log_dir=log_dir,
        env={
            "SWITCHYARD_POOLS": json.dumps([{"name": "bench", "replicas": [engine.url]}]),
            "SWITCHYARD_AUTH_MODE": "disabled",  # what authentication costs is measured on its own
            # Every keyed request of the run kept for its retention (one tenant takes a quarter).
            "SWITCHYARD_IDEMPOTENCY_MEMORY_BYTES": str(KEPT_ANSWERS_BYTES),
        },
        ready_path="/ready",
    )
    servers = [engine, passthrough, gateway]
    targets = [("engine direct", engine), ("FastAPI + aiohttp pass-through", passthrough), ("gateway", gateway)]
    results: list[Result] = []
    try:
        for server in servers:
            server.wait_ready()
        # Cell by cell, the three targets back to back: the machine's drift hits them alike.
        for mode in MODES:
            body = BODY | {"stream": mode.startswith("sse")}
            for connections in args.connections:
                for name, server in targets:
                    httpx.post(server.url + "/v1/chat/completions", json=body, timeout=10).raise_for_status()
                    keyed = mode.endswith("+key")
                    rate, p50, p99, errors = run_wrk(server.url, body, connections, args.duration, keyed=keyed)
                    results.append(Result(name, mode, connections, rate, p50, p99, errors))
                    print(
                        f"{name:32} {mode:8} c={connections:<3} {rate:9.0f} req/s  p50 {p50:7.2f} ms  "
                        f"p99 {p99:7.2f} ms  errors {errors}",
                        flush=True,
                    )
    finally:
        for server in servers:
            server.stop()
    print()
    print(markdown(results))


def markdown(results: list[Result]) -> str:
    by_key = {(r.target, r.mode, r.connections): r for r in results}
    lines = [
        "| mode | c | engine direct req/s | pass-through req/s | gateway req/s | gateway / pass-through "
        "| p50 direct | p50 pass-through | p50 gateway | added p50 vs direct |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        for c in sorted({r.connections for r in results}):
            d = by_key[("engine direct", mode, c)]
            p = by_key[("FastAPI + aiohttp pass-through", mode, c)]
            g = by_key[("gateway", mode, c)]
            # A cell with errors measures refusals, not answers: it has no ratio.
            ratio = f"{g.requests_per_s / p.requests_per_s:.2f}" if not (p.errors or g.errors) else "errors"
            lines.append(
                f"| {mode} | {c} | {d.requests_per_s:,.0f} | {p.requests_per_s:,.0f} | {g.requests_per_s:,.0f} "
                f"| {ratio} | {d.p50_ms:.2f} ms | {p.p50_ms:.2f} ms "
                f"| {g.p50_ms:.2f} ms | {g.p50_ms - d.p50_ms:+.2f} ms |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
