"""A/B of gateways built from several source trees (git worktrees), alternated round by round.

    git worktree add /tmp/before <commit>
    python -m benchmarks.ab_gateways --seconds 6 --rounds 4 [--connections 32] [--stream] \
        [--keyed] [--redis URL] [--traces RATIO] /tmp/before .

Each round starts each tree's gateway in turn on CPU 0 (authentication off, one pool on
the instant engine, which shares CPU 1 with wrk), drives it with wrk (chat, `--stream`: as SSE;
`--keyed`: a new Idempotency-Key on every request, its records in this process or, with
`--redis`, in that Redis; `--traces`: that share of traces recorded and exported over OTLP/HTTP,
to the instant engine, which refuses them, so the export work is done and thrown away) and
stops it. Alternating spreads the machine's drift over every
tree, so the means compare; one run's spread is the noise to read them against.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.gateway_overhead import BODY, KEPT_ANSWERS_BYTES, run_wrk
from harness.servers import ServerProcess, free_port


def _serve(
    tree: Path, engine_url: str, redis_url: str | None, traces: float | None
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    env |= {
        "SWITCHYARD_POOLS": json.dumps([{"name": "bench", "replicas": [engine_url]}]),
        "SWITCHYARD_AUTH_MODE": "disabled",
        "PYTHONPATH": str(tree),
        "SWITCHYARD_IDEMPOTENCY_MEMORY_BYTES": str(KEPT_ANSWERS_BYTES),  # no keyed request refused as over its share
    }
    if redis_url:
        env["SWITCHYARD_REDIS_URL"] = redis_url
    if traces is not None:
        env |= {"SWITCHYARD_OTLP_ENDPOINT": engine_url, "SWITCHYARD_OTLP_SAMPLE_RATIO": str(traces)}
    command = ["taskset", "-c", "0", sys.executable, "-m", "app", "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/ready", timeout=1).status_code == 200:
                time.sleep(2.5)  # a probe round: the replica healthy for routing
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the gateway from {tree} did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=6, help="wrk run per tree and round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--keyed", action="store_true")
    parser.add_argument("--redis", help="keep idempotency records (and rate limits) in this Redis")
    parser.add_argument("--traces", type=float, help="record this share of traces and export them")
    parser.add_argument("trees", nargs="+", type=Path)
    args = parser.parse_args()
    trees = [tree.resolve() for tree in args.trees]
    port = free_port()
    engine = ServerProcess(
        "benchmarks.pinned",
        ["1", "engines.instant", "--port", str(port)],
        port=port,
        log_dir=Path(tempfile.mkdtemp(prefix="ab-")),
    ).wait_ready()
    rates: dict[Path, list[float]] = {tree: [] for tree in trees}
    p50s: dict[Path, list[float]] = {tree: [] for tree in trees}
    try:
        for round_ in range(args.rounds):
            for tree in trees:
                process, url = _serve(tree, engine.url, args.redis, args.traces)
                try:
                    body = BODY | {"stream": args.stream}
                    rate, p50, _, _ = run_wrk(url, body, args.connections, args.seconds, keyed=args.keyed)
                    rates[tree].append(rate)
                    p50s[tree].append(p50)
                finally:
                    process.terminate()
                    process.wait()
            print(f"round {round_ + 1}: " + ", ".join(f"{t.name} {r[-1]:.0f}" for t, r in rates.items()), flush=True)
    finally:
        engine.stop()
    for tree, values in rates.items():
        p50 = sorted(p50s[tree])[len(values) // 2]
        mean = sum(values) / len(values)
        print(f"{tree}: mean {mean:.0f} req/s over {[round(v) for v in values]}, median p50 {p50:.2f} ms")


if __name__ == "__main__":
    main()
