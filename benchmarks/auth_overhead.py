"""Benchmark: what authentication and tracing cost the gateway, in one run.

    python -m benchmarks.auth_overhead [--seconds 10] [--rounds 2]

Five gateways on CPU 0, driven one at a time by wrk (c=32, non-streaming chat) on CPU 1
beside the instant engine: `off` (authentication disabled, no tracer), `auth` (the built-in
issuer's token on every request: verified once, then from the cache), `auth+traces` (the
same, every trace recorded and exported over OTLP/HTTP; the instant engine stands in for
the collector and refuses them, so the export work is done and thrown away),
`auth+traces/10` (one trace in ten recorded) and `auth+traces/0` (none recorded: what a
sampled-out request still costs). Metrics are always on. Rounds alternate the
gateways, so the machine's drift hits them alike. Beside req/s, the gateway's CPU time a
request: what it spent, whatever else the machine ran.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.gateway_overhead import BODY, run_wrk
from harness.servers import ROOT, ServerProcess, free_port

VARIANTS = ("off", "auth", "auth+traces", "auth+traces/10", "auth+traces/0")
SAMPLE_RATIOS = {"auth+traces": "1.0", "auth+traces/10": "0.1", "auth+traces/0": "0.0"}


def _gateway(variant: str, engine_url: str, data_dir: Path, log_dir: Path) -> tuple[ServerProcess, dict[str, str]]:
    port = free_port()
    env = {
        "SWITCHYARD_POOLS": json.dumps([{"name": "bench", "replicas": [engine_url]}]),
        "SWITCHYARD_DATA_DIR": str(data_dir),
        "SWITCHYARD_AUTH_MODE": "disabled" if variant == "off" else "builtin",
    }
    if variant.startswith("auth+traces"):
        env["SWITCHYARD_OTLP_ENDPOINT"] = engine_url
        env["SWITCHYARD_OTLP_SAMPLE_RATIO"] = SAMPLE_RATIOS[variant]
    gateway = ServerProcess(
        "benchmarks.pinned",
        ["0", "app", "--port", str(port), "--log-level", "warning"],
        port=port,
        log_dir=log_dir,
        env=env,
        ready_path="/ready",
    ).wait_ready()
    if variant == "off":
        return gateway, {}
    command = [sys.executable, "-m", "app.auth", "--port", str(port), "token", "--scope", "chat"]
    token = subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout.strip()
    return gateway, {"Authorization": f"Bearer {token}"}


def _cpu_s(pid: int) -> float:
    """The process's CPU time so far (user + system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="auth-bench-"))
    engine_port = free_port()
    engine = ServerProcess(
        "benchmarks.pinned", ["1", "engines.instant", "--port", str(engine_port)], port=engine_port, log_dir=work
    ).wait_ready()
    gateways = {v: _gateway(v, engine.url, work / v.replace("+", "-").replace(" ", "-"), work) for v in VARIANTS}
    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu_us: dict[str, list[float]] = {v: [] for v in VARIANTS}
    try:
        for _ in range(args.rounds):
            for variant, (gateway, headers) in gateways.items():
                before = _cpu_s(gateway.process.pid)
                rate, _, _, errors = run_wrk(gateway.url, BODY, 32, args.seconds, headers=headers)
                if errors:
                    raise RuntimeError(f"{variant}: {errors} answers were not 2xx")
                rates[variant].append(rate)
                cpu_us[variant].append(1e6 * (_cpu_s(gateway.process.pid) - before) / (rate * args.seconds))
    finally:
        for gateway, _ in gateways.values():
            gateway.stop()
        engine.stop()
    base = {name: statistics.mean(rates[name]) for name in ("off", "auth")}
    base_cpu = statistics.mean(cpu_us["auth"])
    print("| gateway | req/s | of off | of auth | CPU µs a request | of auth |\n|---|---|---|---|---|---|")
    for variant in VARIANTS:
        rate, cpu = statistics.mean(rates[variant]), statistics.mean(cpu_us[variant])
        print(
            f"| {variant} | {rate:.0f} ({', '.join(f'{v:.0f}' for v in rates[variant])}) | {rate / base['off']:.2f} "
            f"| {rate / base['auth']:.2f} | {cpu:.0f} ({', '.join(f'{v:.0f}' for v in cpu_us[variant])}) "
            f"| {cpu / base_cpu:.2f} |"
        )


if __name__ == "__main__":
    main()
