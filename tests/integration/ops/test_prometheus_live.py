"""The rules and dashboards against what the gateway really exposes: a real Prometheus (the
`prometheus` server `make test` installs) scrapes a real gateway under load, a real engine and
two sync sidecars every second and evaluates the repository's rules every second. After load,
every recording rule and every Grafana panel query has data, the healthy SLO ratios read 0 and
no alert is pending; slow first tokens, then failing engines, make the matching alerts pending.

The alerts' `for` is not waited for: pending is the moment their condition holds.
"""

import asyncio
import json
import math
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from harness.scrape import scrape
from harness.servers import ROOT, ServerProcess, free_port
from tests.conftest import MODEL as ENGINE_MODEL

PROMETHEUS = shutil.which("prometheus") or "prometheus"  # `make test` installs it (Debian: prometheus)
RULES = ROOT / "dashboards" / "rules" / "slo.rules.yml"
DASHBOARDS = ROOT / "dashboards" / "grafana"
COUNTING = "counting"  # harness/counting_engine.py's model
CHAT = "/v1/chat/completions"
MAX_LOAD = 8  # the counting pool's: the healthy load stays under it, so nothing is shed
# Alerts whose condition this test cannot bring about in seconds: the promtool unit tests
# (dashboards/rules/slo.rules.test.yml) fire them.
NOT_FIRED_HERE = {
    "SwitchyardSyncLagging": "its condition is 300 s without a complete round with a peer",
    "SwitchyardSyncDiverged": "peers differ only until the round that reconciles them, under a second here",
}


class Prometheus:
    """A `prometheus` server of the test's own: scrapes `targets` (job -> URLs) and evaluates
    the repository's rules every second, with its storage in `tmp`."""

    def __init__(self, targets: dict[str, list[str]], tmp: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        jobs = [
            {"job_name": job, "static_configs": [{"targets": [url.removeprefix("http://") for url in urls]}]}
            for job, urls in targets.items()
        ]
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": jobs,
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log_path = tmp / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 30.0) -> "Prometheus":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_path.read_text()[-3000:]
            try:
                if httpx.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError("prometheus not ready:\n" + self.log_path.read_text()[-3000:])

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        assert response.status_code == 200, (expr, response.text)
        result: list[dict[str, Any]] = response.json()["data"]["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        """Alerts pending or firing."""
        alerts: list[dict[str, Any]] = httpx.get(self.url + "/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return alerts

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


@dataclass
class Stack:
    gateway: ServerProcess
    counting: ServerProcess
    prometheus: Prometheus


def _has_data(result: list[dict[str, Any]]) -> bool:
    """A sample that is a number: a quantile of nothing is NaN, which a panel shows as nothing."""
    return any(not math.isnan(float(sample["value"][1])) for sample in result)


def _eventually(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return True


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


GRAFANA_INTERVALS = {"__rate_interval": "1m", "__interval": "15s", "__range": "5m"}


def _panel_queries(prometheus: Prometheus) -> dict[str, str]:
    """Every panel query of every dashboard, by dashboard, panel title and position, with
    Grafana's interval variables and each dashboard variable replaced by a value Prometheus
    has for the label of that name (what a reader picks from its list)."""
    queries: dict[str, str] = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        values = dict(GRAFANA_INTERVALS)
        for variable in dashboard.get("templating", {}).get("list", []):
            if variable["type"] != "datasource":
                known = httpx.get(f"{prometheus.url}/api/v1/label/{variable['name']}/values", timeout=10).json()
                values[variable["name"]] = known["data"][0] if known["data"] else ""
        panels = list(dashboard["panels"])
        for panel in panels:
            panels += panel.get("panels", [])  # those inside a collapsed row
            for i, target in enumerate(panel.get("targets", [])):
                queries[f"{path.name}: {panel['title']} #{i}"] = _substitute(target["expr"], values)
    return queries


def _substitute(expr: str, values: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"no value for ${name} in {expr}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


async def _send(url: str, requests: Sequence[tuple[str, dict[str, Any] | bytes]], concurrency: int) -> list[int]:
    """Sends each (path, body) to the gateway, `concurrency` at a time; reads streams to their end."""
    gate = asyncio.Semaphore(concurrency)

    async def one(client: httpx.AsyncClient, path: str, body: dict[str, Any] | bytes) -> int:
        async with gate:
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers = {"content-type": "application/json"}
            async with client.stream("POST", url + path, content=content, headers=headers) as response:
                await response.aread()
                return response.status_code

    async with httpx.AsyncClient(timeout=60) as client:
        return list(await asyncio.gather(*(one(client, path, body) for path, body in requests)))


def _chat(model: str, i: int, *, stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": f"m{i}"}], "max_tokens": 4}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


def _requests_seen(stack: Stack) -> bool:
    """Prometheus has scraped every request the gateway has counted."""
    counted = sum(v for (name, _), v in scrape(stack.gateway.url).items() if name == "llm_requests_total")
    seen = stack.prometheus.query("sum(llm_requests_total)")
    return bool(seen) and float(seen[0]["value"][1]) == counted


@pytest.fixture(scope="module")
def stack(
    engine: ServerProcess, counting_engine: ServerProcess, log_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A gateway with two pools in two regions (the real engine; the counting engine, whose
    faults the test injects), two sync sidecars peering with each other, and Prometheus."""
    tmp = tmp_path_factory.mktemp("prometheus-live")
    pools = [
        {"name": "local", "region": "local", "replicas": [engine.url], "max_load": 1},
        {"name": "counting", "region": "eu", "replicas": [counting_engine.url], "max_load": MAX_LOAD},
    ]
    env = {"SWITCHYARD_POOLS": json.dumps(pools), "SWITCHYARD_HEALTH_INTERVAL_S": "0.5", "SWITCHYARD_MAX_QUEUE": "0"}
    env["SWITCHYARD_MAX_EJECTED_FRACTION"] = "1"  # the counting pool's one replica may be ejected
    port = free_port()
    gateway = ServerProcess("app", ["--port", str(port)], port=port, log_dir=log_dir, env=env, ready_path="/ready")
    sync_ports = [free_port(), free_port()]
    sidecars = [
        ServerProcess(
            "sync",
            ["--port", str(port), "--peer", f"http://127.0.0.1:{peer}", "--engine", engine.url],
            port=port,
            log_dir=log_dir,
            env={"SWITCHYARD_DATA_DIR": str(tmp / f"sync-{port}"), "SWITCHYARD_SYNC_ANTI_ENTROPY_INTERVAL_S": "0.5"},
        )
        for port, peer in zip(sync_ports, reversed(sync_ports), strict=True)
    ]
    targets = {
        "switchyard-gateway": [gateway.url],
        "switchyard-engine": [engine.url, counting_engine.url],
        "switchyard-sync": [sidecar.url for sidecar in sidecars],
    }
    prometheus = Prometheus(targets, tmp)
    try:
        for server in (gateway, *sidecars):
            server.wait_ready()
        prometheus.wait_ready()
        # Its first scrapes come a few seconds after it starts: the load must come after them,
        # or each counter's first sample already holds all of it and its rate is 0.
        up = sum(map(len, targets.values()))
        assert _eventually(lambda: len(prometheus.query("up == 1")) == up, timeout=20), prometheus.query("up")
        yield Stack(gateway, counting_engine, prometheus)
    finally:
        prometheus.stop()
        for server in (gateway, *sidecars):
            server.stop()


@pytest.fixture(scope="module")
def loaded(stack: Stack) -> Stack:
    """A few hundred requests: whole and streamed answers from both pools, and client errors.

    One of each kind goes first, and Prometheus scrapes what they made: a series the gateway
    creates on its first use holds that use in its first sample, which no rate() sees (traffic
    that never stops hides this; a burst between two scrapes would be all of it)."""
    first = [(CHAT, _chat(COUNTING, 0)), (CHAT, _chat(COUNTING, 0, stream=True)), (CHAT, _chat(ENGINE_MODEL, 0))]
    assert asyncio.run(_send(stack.gateway.url, first, concurrency=1)) == [200] * 3
    assert _eventually(lambda: _requests_seen(stack), timeout=15)
    requests: list[tuple[str, dict[str, Any] | bytes]] = []
    requests += [(CHAT, _chat(COUNTING, i)) for i in range(150)]
    requests += [(CHAT, _chat(COUNTING, i, stream=True)) for i in range(100)]
    requests += [(CHAT, _chat("no-such-model", i)) for i in range(10)]  # 404
    requests += [(CHAT, {"model": COUNTING}) for _ in range(10)]  # 400: no messages
    requests += [(CHAT, b'{"model": "counting", "messages": [') for _ in range(10)]  # 400: not JSON
    statuses = asyncio.run(_send(stack.gateway.url, requests, concurrency=MAX_LOAD - 2))
    assert statuses == [200] * 250 + [404] * 10 + [400] * 20
    # The local pool takes one request at a time (max_load 1, no queue): these go one by one.
    local: list[tuple[str, dict[str, Any] | bytes]] = [(CHAT, _chat(ENGINE_MODEL, i)) for i in range(6)]
    local += [("/v1/completions", {"model": ENGINE_MODEL, "prompt": f"p{i}", "max_tokens": 4}) for i in range(4)]
    assert asyncio.run(_send(stack.gateway.url, local, concurrency=1)) == [200] * 10
    assert _eventually(lambda: _requests_seen(stack), timeout=15)
    return stack


def test_every_recording_rule_and_its_expression_has_data(loaded: Stack) -> None:
    rules = [rule for rule in _rules() if "record" in rule]
    assert len(rules) == 14
    # The rules are evaluated every second: give each a few evaluations after the last scrape.
    _eventually(lambda: all(_has_data(loaded.prometheus.query(rule["record"])) for rule in rules), timeout=5)
    empty = [rule["record"] for rule in rules if not _has_data(loaded.prometheus.query(rule["record"]))]
    empty += [f"expr of {rule['record']}" for rule in rules if not _has_data(loaded.prometheus.query(rule["expr"]))]
    assert not empty


def test_every_panel_query_has_data(loaded: Stack) -> None:
    queries = _panel_queries(loaded.prometheus)
    assert len(queries) >= 45
    empty = sorted(where for where, expr in queries.items() if not _has_data(loaded.prometheus.query(expr)))
    assert not empty, f"{len(empty)} of {len(queries)} panel queries have no data: {empty}"


def test_healthy_slo_ratios_read_zero_and_no_alert_is_pending(loaded: Stack) -> None:
    for rule in _rules():
        if rule.get("record", "").startswith("slo:"):
            result = loaded.prometheus.query(rule["record"])
            assert [float(sample["value"][1]) for sample in result] == [0.0], rule["record"]
        if "alert" in rule:
            assert loaded.prometheus.query(rule["expr"]) == [], rule["alert"]
    assert loaded.prometheus.alerts() == []


def _pending(prometheus: Prometheus, alert: str, label: str) -> set[str]:
    """The `label` values of the instances of `alert` that are pending or firing."""
    return {
        a["labels"][label]
        for a in prometheus.alerts()
        if a["labels"]["alertname"] == alert and a["state"] in ("pending", "firing")
    }


def test_faults_make_the_matching_alerts_pending(loaded: Stack) -> None:
    prometheus, counting = loaded.prometheus, loaded.counting
    alerts = {rule["alert"] for rule in _rules() if "alert" in rule}
    fired = {"SwitchyardTTFTBurn", "SwitchyardAvailabilityBurn", "SwitchyardReplicaEjected", "SwitchyardShedding"}
    assert alerts == fired | set(NOT_FIRED_HERE)

    # First tokens 1.2 s late on about a third of the streams: every TTFT window burns, and
    # only that (slow is not failed).
    httpx.post(counting.url + "/control", json={"stall_s": 1.2}).raise_for_status()
    slow = [(CHAT, _chat(COUNTING, i, stream=True)) for i in range(48)]
    assert asyncio.run(_send(loaded.gateway.url, slow, concurrency=MAX_LOAD)) == [200] * 48
    windows = {"1h", "6h", "1d", "3d"}
    assert _eventually(lambda: _pending(prometheus, "SwitchyardTTFTBurn", "window") == windows, timeout=10), (
        prometheus.alerts()
    )
    assert _pending(prometheus, "SwitchyardAvailabilityBurn", "window") == set()
    # The recorded ratio is the gateway's own count of streams over 1 s to their first token.
    samples = scrape(loaded.gateway.url)
    streams = sum(v for (name, _), v in samples.items() if name == "llm_time_to_first_token_seconds_count")
    fast = sum(
        v
        for (name, labels), v in samples.items()
        if name == "llm_time_to_first_token_seconds_bucket" and ("le", "1.0") in labels
    )
    expected = (streams - fast) / streams

    def recorded() -> float:
        return float(prometheus.query("slo:llm_ttft_slow:ratio_rate1h")[0]["value"][1])

    # Once Prometheus has scraped the last streams and evaluated the rules again.
    assert _eventually(lambda: recorded() == pytest.approx(expected, abs=0.01), timeout=10), (recorded(), expected)
    assert streams - fast >= 48

    # The engine fails: its 500s, then 503s once its replica is ejected, burn the availability
    # budget in every window, and the ejected replica's alert is pending.
    httpx.post(counting.url + "/control", json={"fail_status": 500, "fail_times": 1000}).raise_for_status()
    failing = [(CHAT, _chat(COUNTING, i)) for i in range(30)]
    statuses = asyncio.run(_send(loaded.gateway.url, failing, concurrency=4))
    assert all(status >= 500 for status in statuses), statuses
    assert _eventually(lambda: _pending(prometheus, "SwitchyardAvailabilityBurn", "window") == windows, timeout=10), (
        prometheus.alerts()
    )
    assert _eventually(
        lambda: _pending(prometheus, "SwitchyardReplicaEjected", "replica") == {"counting-0"}, timeout=10
    ), prometheus.alerts()

    # Capacity short (after the availability alert, which sheds fire too: each is a 503): a
    # burst at the local pool, which takes one request at a time with no queue, is mostly shed.
    burst = [(CHAT, _chat(ENGINE_MODEL, i)) for i in range(40)]
    statuses = asyncio.run(_send(loaded.gateway.url, burst, concurrency=40))
    assert statuses.count(503) >= 30, statuses
    assert _eventually(lambda: _pending(prometheus, "SwitchyardShedding", "severity") == {"ticket"}, timeout=10), (
        prometheus.alerts()
    )
