"""Benchmark: a 5 MB adapter published in one region, until every region of 3 has it.

    python -m benchmarks.sync_transfer [--rank 1400] [--runs 3]

Three real sidecars (`python -m sync`) on loopback, each peer link through its own proxy
that delays every chunk both ways (harness/faultproxy.py `one_way_s`), run once with 25 ms
one way (50 ms RTT) and once with none, alternately. Timed from the publish request: when
the other two regions list the adapter (the delta arrived) and when both have its blobs
fetched, verified and stacked into the folder an engine would load (reconcile every 0.1 s).
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from engines.builtin_model import ensure_builtin_model
from harness.adapters import make_lora_adapter
from harness.faultproxy import FaultProxy
from harness.servers import ServerProcess, free_port

REGIONS = ("a", "b", "c")


def _start(work: Path, model: Path, one_way_s: float) -> tuple[dict[str, ServerProcess], list[FaultProxy]]:
    ports = {region: free_port() for region in REGIONS}
    links = {(s, t): FaultProxy(ports[t]) for s in REGIONS for t in REGIONS if s != t}
    for proxy in links.values():
        proxy.set("pass", one_way_s=one_way_s)
    env = {
        "SWITCHYARD_DATA_DIR": str(work / f"data-{time.time_ns()}"),
        "SWITCHYARD_SYNC_BASE_MODELS": json.dumps(["switchyard-tiny-v1", str(model)]),
        "SWITCHYARD_SYNC_MAX_RANK": "4096",
        "SWITCHYARD_SYNC_RECONCILE_INTERVAL_S": "0.1",
        "SWITCHYARD_SYNC_LOG_LEVEL": "warning",
        "SWITCHYARD_SYNC_AUTH_MODE": "disabled",  # loopback only: the transfer is measured, not the token check
    }
    sidecars = {}
    for region in REGIONS:
        args = ["--region", region, "--port", str(ports[region])]
        args += [arg for (s, _), proxy in links.items() if s == region for arg in ("--peer", proxy.url)]
        sidecars[region] = ServerProcess("sync", args, port=ports[region], log_dir=work, env=env).wait_ready()
    return sidecars, list(links.values())


def _view(sidecar: ServerProcess, name: str) -> dict[str, object]:
    adapters = httpx.get(sidecar.url + "/adapters", timeout=5).json()["adapters"]
    return next((a for a in adapters if a["name"] == name), {})


def _one_run(work: Path, model: Path, adapter: Path, one_way_s: float) -> tuple[float, float]:
    sidecars, proxies = _start(work, model, one_way_s)
    try:
        started = time.perf_counter()
        response = httpx.post(sidecars["a"].url + "/adapters", json={"name": "big", "path": str(adapter)}, timeout=60)
        response.raise_for_status()
        listed: float | None = None
        while True:
            views = [_view(sidecars[r], "big") for r in ("b", "c")]
            if listed is None and all(v.get("served") for v in views):
                listed = time.perf_counter() - started
            if all(v.get("stacked") for v in views):
                assert listed is not None
                return listed, time.perf_counter() - started
            if time.perf_counter() - started > 120:
                raise RuntimeError("the adapter did not reach every region in 120 s")
            time.sleep(0.005)
    finally:
        for sidecar in sidecars.values():
            sidecar.stop()
        for proxy in proxies:
            proxy.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rank", type=int, default=1400, help="LoRA rank (1400: about 5 MB on the built-in model)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sync-transfer-"))
    model = ensure_builtin_model(work / "model")
    adapter = make_lora_adapter(model, work / "big", rank=args.rank)
    size = sum(f.stat().st_size for f in adapter.iterdir() if f.suffix in (".safetensors", ".json"))
    print(f"adapter: {size / 1e6:.2f} MB (rank {args.rank})")
    results: dict[float, list[tuple[float, float]]] = {0.0: [], 0.025: []}
    for _ in range(args.runs):
        for one_way in results:
            results[one_way].append(_one_run(work, model, adapter, one_way))
    print("| link | listed in b and c (median s) | blobs fetched and stacked in b and c (median s) | runs |")
    print("|---|---|---|---|")
    for one_way, runs in results.items():
        listed = statistics.median(r[0] for r in runs)
        stacked = statistics.median(r[1] for r in runs)
        each = [(round(a, 3), round(b, 3)) for a, b in runs]
        print(f"| RTT {2 * one_way * 1000:.0f} ms | {listed:.3f} | {stacked:.3f} | {each} |")


if __name__ == "__main__":
    main()
