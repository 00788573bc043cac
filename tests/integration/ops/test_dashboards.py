"""The Prometheus rules and Grafana dashboards: promtool checks and unit-tests the rules (with
input series labelled as the gateway labels its own), every metric a rule or a panel queries
is one the gateway (or an engine, or a sync sidecar) exports or a rule records, and every
alert has its section in docs/runbook.md. tests/integration/ops/test_prometheus_live.py runs
them in a real Prometheus against a real gateway."""

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import yaml
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from app.context import RequestContext
from app.observability.metrics import GatewayMetrics
from app.pools.engine_stats import RUNNING, WAITING
from harness.servers import ROOT
from sync.node import SyncNode
from sync.peers import Peers
from sync.reconcile import Reconciler
from sync.settings import SyncSettings
from sync.telemetry import SyncMetrics

RULES = ROOT / "dashboards" / "rules"
DASHBOARDS = ROOT / "dashboards" / "grafana"
PROMTOOL = shutil.which("promtool") or "promtool"  # `make test` installs it (Debian: prometheus)
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], cwd=RULES, capture_output=True, text=True, timeout=60)


def test_promtool_checks_the_rules() -> None:
    run = _promtool("check", "rules", "slo.rules.yml")
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_compose_prometheus_config_loads_the_rules() -> None:
    run = subprocess.run(
        [PROMTOOL, "check", "config", "deploy/prometheus.yml"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS: 26 rules found" in run.stdout + run.stderr


def test_promtool_unit_tests_pass() -> None:
    run = _promtool("test", "rules", "slo.rules.test.yml")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout


def _gateway_labels() -> dict[str, dict[str, set[str]]]:
    """Each series name the gateway writes, its label names and the values each takes (every
    histogram observed once; the label sets it makes at 0 included)."""
    metrics = GatewayMetrics(queued=lambda: 0, breakers=lambda: [("p", "p-0", "open")])
    timer = metrics.stream(RequestContext("r", time.perf_counter()), "p", "eu")
    timer.relayed(b"data: {}\n\n")
    timer.relayed(b"data: {}\n\n")
    timer.ended()
    metrics.duration("/v1/chat/completions", "m", "2xx").observe(0.1)
    labels: dict[str, dict[str, set[str]]] = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            names = labels.setdefault(sample.name, {name: set() for name in sample.labels})
            for name, value in sample.labels.items():
                names[name].add(value)
    return labels


def _prometheus_3(le: str) -> str:
    """How Prometheus 3.x stores a bucket's bound: `1.0` becomes `1`."""
    bound = float(le)
    return str(int(bound)) if bound.is_integer() else repr(bound)


def test_the_promtool_tests_feed_the_series_the_gateway_exposes() -> None:
    exposed = _gateway_labels()
    fixed = ("le", "route", "status_class", "reason", "kind")  # the label values the gateway fixes
    tests = yaml.safe_load((RULES / "slo.rules.test.yml").read_text())["tests"]
    fed = 0
    for test in tests:
        for series in test["input_series"]:
            name = series["series"].split("{")[0]
            if not name.startswith("llm_"):
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', series["series"]))
            assert name in exposed, (test["name"], name)
            assert set(labels) == set(exposed[name]), (test["name"], name)
            for label in set(fixed) & set(labels):
                allowed = set(exposed[name][label])
                if label == "le" and "3.x" in test["name"]:
                    allowed = {_prometheus_3(le) for le in allowed if le != "+Inf"}
                assert labels[label] in allowed, (test["name"], name, label, labels[label])
            fed += 1
    assert fed >= 20


def _sync_families(data_dir: Path) -> list[Metric]:
    """What a sync sidecar's `/metrics` exposes, with one peer and one engine."""
    settings = SyncSettings(region="r", data_dir=data_dir, peers=["http://peer:1"], engines=["http://engine:2"])
    node = SyncNode(settings)
    peers = Peers(node, httpx.AsyncClient())
    metrics = SyncMetrics()
    metrics.watch(node, peers, Reconciler(node, peers, peers.client))
    peers.peers[0].last_synced = 0.0
    return list(metrics.registry.collect())


def _exported(data_dir: Path) -> set[str]:
    """Every series name the gateway, a sync sidecar, can expose, suffixes included."""
    names: set[str] = set()
    for family in [*GatewayMetrics().registry.collect(), *_sync_families(data_dir)]:
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + suffix for suffix in HISTOGRAM_SUFFIXES)
    return names


def _queried(expr: str) -> set[str]:
    """The series names in a PromQL expression: gateway (`llm_`), engine (`vllm:`), sidecar
    (`sync_`) or recorded (`slo:`)."""
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", re.sub(r'"[^"]*"|\{[^}]*\}|\[[^]]*\]', " ", expr)))
    return {w for w in words if w.startswith(("llm_", "vllm:", "sync_", "slo:"))}


def _rules() -> list[dict[str, str]]:
    groups = yaml.safe_load((RULES / "slo.rules.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _panel_exprs() -> dict[str, list[str]]:
    exprs: dict[str, list[str]] = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        exprs[path.name] = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    return exprs


def test_every_queried_metric_is_exported_or_recorded(tmp_path: Path) -> None:
    rules = _rules()
    recorded = {rule["record"] for rule in rules if "record" in rule}
    known = _exported(tmp_path) | recorded | {RUNNING, WAITING}
    dashboards = _panel_exprs()
    assert set(dashboards) == {"overview.json", "slo.json", "engines.json", "regions.json"}
    queried = {f"rule {rule.get('record') or rule['alert']}": _queried(rule["expr"]) for rule in rules}
    queried |= {f"{name} panel {i}": _queried(e) for name, exprs in dashboards.items() for i, e in enumerate(exprs)}
    assert all(queried.values()), [where for where, names in queried.items() if not names]
    unknown = {where: sorted(names - known) for where, names in queried.items() if names - known}
    assert not unknown


def test_every_alert_has_a_runbook_section() -> None:
    groups = yaml.safe_load((RULES / "slo.rules.yml").read_text())["groups"]
    alerts = {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}
    sections = set(re.findall(r"^## (\w+)$", (ROOT / "docs" / "runbook.md").read_text(), re.MULTILINE))
    assert alerts
    assert alerts <= sections, sorted(alerts - sections)
    for group in groups:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["annotations"]["runbook_url"] == f"docs/runbook.md#{rule['alert'].lower()}"
