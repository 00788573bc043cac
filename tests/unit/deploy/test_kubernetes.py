"""The Kubernetes manifests (deploy/k8s), as `kubectl kustomize` renders each overlay: every
object valid against the schemas of a pinned Kubernetes version (strict: no unknown field),
and the mistakes a schema cannot see caught here: an environment variable that is no setting
or whose value the part's settings refuse, a probe on a path or port the part does not serve,
a grace period shorter than the drain, an autoscaler on a metric nobody exports, a network
policy that leaves an engine open or the public path closed, images of different tags, and
credentials written into a manifest."""

import ipaddress
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from app.settings import GatewaySettings, load_settings
from engines.transformers.settings import EngineSettings
from finetune.settings import WorkerSettings
from harness.servers import ROOT
from sync.settings import SyncSettings

K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["eu", "us", "edge", "eu-gpu", "eu-sharded"]
KUBERNETES = "1.33.0"  # the oldest version these manifests are for (preStop `sleep`: 1.30)
SETTINGS: dict[str, type[BaseSettings]] = {
    "gateway": GatewaySettings,
    "engine": EngineSettings,
    "sync": SyncSettings,
    "finetune": WorkerSettings,
}
EXTRA_ENV = {"gateway": {"SWITCHYARD_CONFIG"}}  # read by the gateway's settings loader, not a field
OTHER_ENV = {"HF_HOME", "HOME"}  # libraries' own
VLLM_ENV = {"VLLM_API_KEY", "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "HF_TOKEN", "HOME"}  # vLLM's image's
LWS = "leaderworkerset.x-k8s.io/v1"
SECRET_NAMES = re.compile(r"(KEY|SECRET|PASSWORD|TOKEN|DATABASE_URL|HASH|AUTH)$")
ROUTES = {
    "gateway": {"/ready", "/health", "/metrics"},
    "engine": {"/health", "/metrics"},
    "sync": {"/health", "/metrics"},
}


def _render(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(["kubectl", "kustomize", str(path)], check=True, capture_output=True, text=True).stdout
    return [document for document in yaml.safe_load_all(out) if document]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, _render(K8S / "overlays" / request.param)


def _templates(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """A workload's pod templates (a LeaderWorkerSet has a leader's and a worker's)."""
    if obj["kind"] in ("Deployment", "StatefulSet"):
        return [obj["spec"]["template"]]
    if obj["kind"] == "LeaderWorkerSet":
        group = obj["spec"]["leaderWorkerTemplate"]
        return [group["leaderTemplate"], group["workerTemplate"]]
    return []


def _containers(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(the workload, one of its containers, init containers too) for every workload."""
    for obj in objects:
        for template in _templates(obj):
            for container in [*template["spec"].get("initContainers", []), *template["spec"]["containers"]]:
                yield obj, container


def _environment(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet makes it: a secret's key stands in for its
    value, and `$(NAME)` is replaced by an earlier variable's value."""
    env: dict[str, str] = {}
    for variable in container.get("env", []):
        if "valueFrom" in variable:
            reference = variable["valueFrom"]["secretKeyRef"]["key"]
            value = (
                f"scrypt$placeholder-{reference}" if reference.endswith("hash") else f"a-secret-value-for-{reference}"
            )
            if reference == "database-url":
                value = "postgresql+asyncpg://switchyard@postgres/switchyard"
            if reference == "console-users":  # a list of users, as docs/deploy.md shows it
                value = '[{"username": "ada", "password_hash": "scrypt$placeholder", "scopes": ["admin"]}]'
        else:
            value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), variable["value"])
        env[variable["name"]] = value
    return env


def _setting_names(settings: type[BaseSettings]) -> set[str]:
    prefix = str(settings.model_config.get("env_prefix", ""))
    names = set()
    for field, info in settings.model_fields.items():
        names.add(f"{prefix}{field}".upper())
        if isinstance(info.validation_alias, AliasChoices):
            names |= {str(choice).upper() for choice in info.validation_alias.choices if str(choice).isupper()}
    return names


def test_every_object_is_valid_for_the_pinned_kubernetes(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = overlay
    assert {obj["kind"] for obj in objects} >= {"Deployment", "StatefulSet", "Service", "NetworkPolicy"}
    for obj in [*objects, *_render(K8S / "monitoring")]:
        if obj["apiVersion"] == LWS:
            _check_leader_worker_set(obj)
        else:
            kubernetes_validate.validate(obj, KUBERNETES, strict=True)


def _check_leader_worker_set(obj: dict[str, Any]) -> None:
    """A LeaderWorkerSet (a custom resource, whose schema is LWS's): its fields as LWS defines
    them, its pod templates valid as the core PodTemplate's, and a pipeline as deep as its group."""
    assert obj["kind"] == "LeaderWorkerSet"
    assert set(obj["spec"]) <= {"replicas", "leaderWorkerTemplate", "rolloutStrategy", "startupPolicy", "networkConfig"}
    group = obj["spec"]["leaderWorkerTemplate"]
    assert set(group) <= {"size", "restartPolicy", "leaderTemplate", "workerTemplate", "subGroupPolicy"}
    assert group["size"] >= 2
    assert group["restartPolicy"] in ("RecreateGroupOnPodRestart", "None")
    for template in (group["leaderTemplate"], group["workerTemplate"]):
        core = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
        kubernetes_validate.validate(core, KUBERNETES, strict=True)
    leader = " ".join(group["leaderTemplate"]["spec"]["containers"][0]["args"])
    gpus = int(group["leaderTemplate"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    assert f"--tensor-parallel-size={gpus}" in leader
    assert "--pipeline-parallel-size=$(LWS_GROUP_SIZE)" in leader


def test_every_variable_is_a_setting_and_the_settings_take_the_values(
    overlay: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _, objects = overlay
    files = {obj["metadata"]["name"]: obj["data"] for obj in objects if obj["kind"] == "ConfigMap"}
    seen = set()
    for _, container in _containers(objects):
        part = container["name"]
        if part not in SETTINGS:
            continue
        seen.add(part)
        env = _environment(container)
        unfilled = {name: value for name, value in env.items() if "$(" in value}
        assert not unfilled, f"{part}: a $(VAR) names no earlier variable: {unfilled}"
        if container["image"].startswith("vllm/"):
            assert set(env) <= VLLM_ENV, f"{part}: {set(env) - VLLM_ENV}"
            continue
        allowed = _setting_names(SETTINGS[part]) | EXTRA_ENV.get(part, set())
        for name in env:
            referenced = any(f"$({name})" in str(v.get("value", "")) for v in container["env"])
            assert name in allowed or name in OTHER_ENV or referenced, f"{part}: {name} is no setting"
        for name in list(os.environ):
            if name.startswith("SWITCHYARD_"):
                monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        if part == "gateway":
            config = tmp_path / "gateway.yaml"
            config.write_text(next(iter(files.values()))["gateway.yaml"])
            settings = load_settings(config_file=config)
            assert settings.pools
            assert all(pool.discover or pool.replicas for pool in settings.pools)
        else:
            SETTINGS[part]()
    assert seen >= {"gateway", "engine", "sync"}


def test_probes_reach_paths_and_ports_the_parts_serve(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = overlay
    for _, container in _containers(objects):
        ports = {port["name"]: port["containerPort"] for port in container.get("ports", [])}
        env = _environment(container)
        for kind in ("readinessProbe", "livenessProbe"):
            probe = container.get(kind, {})
            if "httpGet" not in probe:
                continue
            assert probe["httpGet"]["path"] in ROUTES[container["name"]], (container["name"], kind)
            assert probe["httpGet"]["port"] in ports
        listening = {"engine": env.get("SWITCHYARD_ENGINE_PORT"), "sync": env.get("SWITCHYARD_SYNC_PORT")}
        if listening.get(container["name"]):
            assert int(str(listening[container["name"]])) in ports.values()


def test_the_grace_period_covers_the_pause_and_the_drain(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = overlay
    files = {obj["metadata"]["name"]: obj["data"] for obj in objects if obj["kind"] == "ConfigMap"}
    drain = yaml.safe_load(next(iter(files.values()))["gateway.yaml"])["drain_timeout_s"]
    for workload, container in _containers(objects):
        if container["name"] != "gateway":
            continue
        pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > pause + drain + 5


def test_autoscalers_read_series_the_parts_export(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = overlay
    adapter = next(o for o in _render(K8S / "monitoring") if o["metadata"]["name"] == "switchyard-adapter-rules")
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    exported = _exported_series()
    served = set()
    for rule in rules:
        series = rule["seriesQuery"].split("{")[0]
        assert series in exported, f"{series} is exported by no part"
        matched = re.match(rule["name"]["matches"], series)
        assert matched is not None
        served.add(matched.expand(rule["name"]["as"].replace("${", "\\g<").replace("}", ">")))
    for hpa in (obj for obj in objects if obj["kind"] == "HorizontalPodAutoscaler"):
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] == "Pods":
                assert metric["pods"]["metric"]["name"] in served, hpa["metadata"]["name"]


def _exported_series() -> set[str]:
    """Metric names in the sources of the gateway's and the engines' metrics."""
    names = set()
    for source in ("app/observability/metrics.py", "engines/server/metrics.py"):
        names |= set(re.findall(r'"((?:vllm:|llm_)[a-z_]+)"', (ROOT / source).read_text()))
    return names


def test_network_policies_open_the_public_and_peer_paths_and_close_the_rest(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    name, objects = overlay
    policies = [obj for obj in objects if obj["kind"] == "NetworkPolicy"]
    here = objects[0]["metadata"].get("namespace", "")
    allowed = _Policies(policies, here).allows
    anyone = _Source(ip="203.0.113.7")
    for part, port in (("gateway", 8000), ("engine", 8100), ("sync", 8300), ("redis", 6379)):
        assert allowed(anyone, part, port) is (part == "gateway"), part
        assert not allowed(_Source(pod="intruder"), part, port) or part == "gateway", part
        assert not allowed(_Source(namespace="elsewhere"), part, port) or part == "gateway", part
    assert allowed(_Source(pod="gateway"), "engine", 8100)
    assert allowed(_Source(pod="gateway"), "redis", 6379)
    assert allowed(_Source(pod="sync"), "engine", 8100)
    assert not allowed(_Source(pod="gateway"), "engine", 6379)
    assert allowed(_Source(namespace="monitoring"), "engine", 8100)
    if name == "eu-sharded":  # a group's pods talk Ray and NCCL among themselves
        assert allowed(_Source(pod="engine"), "engine", 6379)
        engines = next(o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "engines")
        assert engines["spec"]["selector"]["leaderworkerset.sigs.k8s.io/worker-index"] == "0"  # leaders serve
    else:
        assert not allowed(_Source(pod="engine"), "engine", 6379)
    if name != "edge":
        assert allowed(_Source(pod="finetune"), "sync", 8300)
        other = {"eu": "10.20.1.2", "us": "10.10.1.2"}[name.split("-")[0]]
        assert allowed(_Source(ip=other), "engine", 8100)  # the other region's gateways spill over
        assert allowed(_Source(ip=other), "sync", 8300)  # its sidecar is a peer


class _Source:
    def __init__(self, *, pod: str | None = None, namespace: str | None = None, ip: str | None = None) -> None:
        self.pod, self.namespace, self.ip = pod, namespace, ip


class _Policies:
    """Ingress NetworkPolicies evaluated as Kubernetes does: a pod selected by any policy
    takes only what some rule of those policies allows."""

    def __init__(self, policies: list[dict[str, Any]], namespace: str) -> None:
        self.policies, self.namespace = policies, namespace

    def allows(self, source: _Source, part: str, port: int) -> bool:
        labels = {"app.kubernetes.io/name": part}
        selecting = [p for p in self.policies if _selects(p["spec"]["podSelector"], labels)]
        if not selecting:
            return True
        return any(self._rule_allows(rule, source, port) for p in selecting for rule in p["spec"].get("ingress", []))

    def _rule_allows(self, rule: dict[str, Any], source: _Source, port: int) -> bool:
        if "ports" in rule and not any(p.get("port") == port for p in rule["ports"]):
            return False
        if "from" not in rule:
            return True
        return any(self._peer_matches(peer, source) for peer in rule["from"])

    def _peer_matches(self, peer: dict[str, Any], source: _Source) -> bool:
        if "ipBlock" in peer:
            return source.ip is not None and ipaddress.ip_address(source.ip) in ipaddress.ip_network(
                peer["ipBlock"]["cidr"]
            )
        if "namespaceSelector" in peer:
            namespace = {"kubernetes.io/metadata.name": source.namespace or ""}
            return source.namespace is not None and _selects(peer["namespaceSelector"], namespace)
        if "podSelector" in peer:  # this namespace's pods
            return (
                source.pod is not None
                and source.namespace is None
                and _selects(peer["podSelector"], {"app.kubernetes.io/name": source.pod})
            )
        return False


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


def test_one_image_tag_and_no_credential_written_in(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = overlay
    assert not [obj for obj in objects if obj["kind"] == "Secret"]  # referenced, created by the operator
    tags = set()
    for _, container in _containers(objects):
        image = container["image"]
        assert ":" in image, image
        assert not image.endswith(":latest"), image
        if "switchyard" in image:
            tags.add(image.rsplit(":", 1)[1])
        for variable in container.get("env", []):
            if SECRET_NAMES.search(variable["name"]):
                assert "valueFrom" in variable, f"{container['name']}: {variable['name']} is written in"
    assert len(tags) == 1


def test_the_monitoring_config_maps_are_dashboards_own() -> None:
    """One source: the rules and dashboards in the cluster are dashboards/'s, as generated."""
    check = subprocess.run(
        [sys.executable, str(K8S / "monitoring" / "generate.py"), "--check"], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    maps = {o["metadata"]["name"]: o for o in _render(K8S / "monitoring")}
    rules = maps["switchyard-prometheus-rules"]["data"]["slo.rules.yml"]
    assert rules == (ROOT / "dashboards" / "rules" / "slo.rules.yml").read_text()
    for board in (ROOT / "dashboards" / "grafana").glob("*.json"):
        config_map = maps[f"switchyard-dashboard-{board.stem}"]
        assert config_map["metadata"]["labels"] == {"grafana_dashboard": "1"}
        assert json.loads(config_map["data"][board.name]) == json.loads(board.read_text())


def test_every_object_lands_in_the_overlays_namespace(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = overlay
    [namespace] = [obj["metadata"]["name"] for obj in objects if obj["kind"] == "Namespace"] or [
        f"switchyard-{name.split('-')[0]}"
    ]
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == namespace, (obj["kind"], obj["metadata"]["name"])


def test_the_public_way_in_is_tls_and_the_apis_paths_only(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = overlay
    [ingress] = [obj for obj in objects if obj["kind"] == "Ingress"]
    [rule] = ingress["spec"]["rules"]
    assert ingress["spec"]["tls"][0]["hosts"] == [rule["host"]]
    paths = {path["path"] for path in rule["http"]["paths"]}
    assert paths == {"/v1", "/oauth", "/.well-known", "/predict", "/fine-tune"}  # no /metrics, /admin, console
    assert all(p["backend"]["service"]["name"] == "gateway" for p in rule["http"]["paths"])
    services = [obj for obj in objects if obj["kind"] == "Service"]
    assert not [svc["metadata"]["name"] for svc in services if svc["spec"].get("type") in ("LoadBalancer", "NodePort")]
