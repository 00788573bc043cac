"""`python -m demo` (`make demo`): two regions on this machine, no containers, to watch the
gateway route.

Each region, `eu` and `us`, runs a Transformers engine on the built-in model, a sync sidecar and a
gateway; every call between the regions (a gateway to the other region's engine, the sidecars'
gossip) crosses a proxy that delays each packet by `--one-way-ms` (40 ms: a 80 ms round trip).
The gateways know both regions' engines, their own first. It prints what to try, then runs
until Ctrl-C. `--check` walks through the same tour itself and exits 0 when every step held:

1. nearest region: each gateway answers from its own region's engine (`x-route-region`);
2. affinity: a conversation (`X-Session-ID`) stays on one replica;
3. adapter sync: an adapter published to region eu's sidecar is served by region us's gateway;
4. spill-over: with region eu's engine stopped, eu's gateway answers from region us.
"""

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from engines.builtin_model import BUILTIN_MODEL_NAME, ensure_builtin_model
from harness.faultproxy import FaultProxy
from harness.servers import ServerProcess, free_port

REGIONS = ("eu", "us")


class Demo:
    """The two regions' processes and the proxies between them."""

    def __init__(self, folder: Path, data_dir: Path, one_way_s: float) -> None:
        self.folder = folder
        self.model = ensure_builtin_model(data_dir)  # built once, then reused
        self.processes: list[ServerProcess] = []
        self.proxies: list[FaultProxy] = []
        self.engines: dict[str, ServerProcess] = {}
        self.sidecars: dict[str, ServerProcess] = {}
        self.gateways: dict[str, ServerProcess] = {}
        self._one_way_s = one_way_s

    def start(self) -> None:
        for region in REGIONS:
            port = free_port()
            args = ["--model", str(self.model), "--served-model-name", BUILTIN_MODEL_NAME, "--port", str(port)]
            self.engines[region] = self._start("engines.transformers", args, port)
        sidecar_ports = {region: free_port() for region in REGIONS}
        for region, other in zip(REGIONS, reversed(REGIONS), strict=True):
            peer = self._far(sidecar_ports[other])
            args = ["--region", region, "--port", str(sidecar_ports[region]), "--auth-mode", "disabled"]
            args += ["--engine", self.engines[region].url, "--peer", peer]
            env = {
                "SWITCHYARD_DATA_DIR": str(self.folder / f"sync-{region}"),
                "SWITCHYARD_SYNC_ANTI_ENTROPY_INTERVAL_S": "1",
                "SWITCHYARD_SYNC_RECONCILE_INTERVAL_S": "0.5",
            }
            self.sidecars[region] = self._start("sync", args, sidecar_ports[region], env=env)
        for region, other in zip(REGIONS, reversed(REGIONS), strict=True):
            other_engine = self._far(int(self.engines[other].url.rsplit(":", 1)[1]))
            pools = [
                {"name": region, "region": region, "replicas": [self.engines[region].url], "max_load": 4},
                {"name": other, "region": other, "replicas": [other_engine], "max_load": 4},
            ]
            env = {
                "SWITCHYARD_REGION": region,
                "SWITCHYARD_POOLS": json.dumps(pools),
                "SWITCHYARD_HEALTH_INTERVAL_S": "0.5",
                "SWITCHYARD_AUTH_MODE": "disabled",  # loopback only
                "SWITCHYARD_DATA_DIR": str(self.folder / f"gateway-{region}"),
            }
            port = free_port()
            self.gateways[region] = self._start("app", ["--port", str(port)], port, env=env, ready="/ready")

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        for proxy in self.proxies:
            proxy.close()

    def _start(
        self, module: str, args: list[str], port: int, *, env: dict[str, str] | None = None, ready: str = "/health"
    ) -> ServerProcess:
        process = ServerProcess(module, args, port=port, log_dir=self.folder, env=env, ready_path=ready)
        self.processes.append(process)
        return process.wait_ready(timeout=300)

    def _far(self, port: int) -> str:
        """A URL for `port` across the regions' link: a proxy delaying each packet one way."""
        proxy = FaultProxy(port)
        proxy.set("pass", one_way_s=self._one_way_s)
        self.proxies.append(proxy)
        return proxy.url


def _chat(gateway: str, *, model: str = BUILTIN_MODEL_NAME, session: str | None = None) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
    headers = {"X-Session-ID": session} if session else {}
    return httpx.post(f"{gateway}/v1/chat/completions", json=body, headers=headers, timeout=60)


def _until(check: Any, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:.0f} s: {what}")
        time.sleep(0.2)


def tour(demo: Demo) -> Iterator[str]:
    """The checks of `--check`, each a line once it held; AssertionError when one does not."""
    eu, us = demo.gateways["eu"].url, demo.gateways["us"].url
    for region, gateway in (("eu", eu), ("us", us)):
        answer = _chat(gateway)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-route-region"] == region, answer.headers
    yield "nearest region: each gateway answers from its own region's engine"
    replicas = {_chat(eu, session="conversation-1").headers["x-route-replica"] for _ in range(5)}
    assert len(replicas) == 1, replicas
    yield f"affinity: a conversation stays on {replicas.pop()}"
    from harness.adapters import make_lora_adapter  # (PEFT: only for this step)

    adapter = make_lora_adapter(demo.model, demo.folder / "adapter")
    published = httpx.post(
        f"{demo.sidecars['eu'].url}/adapters", json={"name": "demo-adapter", "path": str(adapter)}, timeout=60
    )
    assert published.status_code == 201, published.text
    _until(lambda: _chat(us, model="demo-adapter").status_code == 200, "region us serves region eu's adapter")
    yield "adapter sync: published in region eu, served by region us's gateway"
    demo.engines["eu"].stop()
    _until(lambda: _chat(eu).headers.get("x-route-region") == "us", "region eu's gateway spills to us")
    yield "spill-over: with region eu's engine down, eu's gateway answers from region us"


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--one-way-ms", type=float, default=40.0, help="the delay between the regions, each way")
    parser.add_argument("--check", action="store_true", help="walk the tour, then exit (0: every step held)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _stop)  # as Ctrl-C: every process is stopped on the way out
    folder = Path(tempfile.mkdtemp(prefix="switchyard-demo-"))
    data_dir = Path(os.environ.get("SWITCHYARD_DATA_DIR") or Path.home() / ".cache" / "switchyard")
    demo = Demo(folder, data_dir, args.one_way_ms / 1000)
    try:
        print(f"starting two regions (logs in {folder}) ...", flush=True)
        demo.start()
        if args.check:
            for line in tour(demo):
                print(f"ok  {line}", flush=True)
            return
        eu, us = demo.gateways["eu"].url, demo.gateways["us"].url
        print(
            f"""
region eu: gateway {eu}   sync sidecar {demo.sidecars["eu"].url}
region us: gateway {us}   sync sidecar {demo.sidecars["us"].url}
between the regions: {args.one_way_ms:.0f} ms each way

  curl -si {eu}/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"model": "{BUILTIN_MODEL_NAME}", "messages": [{{"role": "user", "content": "hi"}}]}}' | grep x-route
  curl -s {eu}/admin/pools | python3 -m json.tool        # replicas, health, round trips
  python -m demo --check                                  # the whole tour, checked

Ctrl-C stops both regions.""",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    except AssertionError as failed:
        print(f"FAILED  {failed}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        demo.stop()


if __name__ == "__main__":
    main()
