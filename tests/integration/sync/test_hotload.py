"""Three regions, each a real Transformers engine on the built-in model, its sync sidecar and
its gateway: an adapter published in one region is hot-loaded and served in all, the same
answer everywhere at temperature 0 and not the base model's; contributions from two regions
are stacked alike; a restarted engine gets its adapters back. Region c's engine serves the
model under another name: an adapter published elsewhere under that name is never loaded
there, and no staging name is ever left in an engine."""

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.adapters import make_lora_adapter
from harness.fake_nodes import FakeIssuer
from harness.servers import ServerProcess, free_port
from tests.conftest import MODEL, start_engine

REGIONS = ("a", "b", "c")
SERVED_AS = {"a": MODEL, "b": MODEL, "c": "tiny-c"}  # the name each region's engine serves the model under


@dataclass
class Region:
    name: str
    engine: ServerProcess
    sidecar: ServerProcess
    gateway: ServerProcess
    operator: dict[str, str]  # headers of an operator's writes: a token with scope `adapters`

    def publish(self, name: str, folder: Path, **fields: object) -> httpx.Response:
        body = {"name": name, "path": str(folder), **fields}
        return httpx.post(self.sidecar.url + "/adapters", json=body, headers=self.operator, timeout=30)


@pytest.fixture(scope="module")
def adapters(builtin_model: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("hotload-adapters")
    return [make_lora_adapter(builtin_model, root / f"lora{i}", rank=4, seed=10 + i) for i in range(2)]


@pytest.fixture(scope="module")
def regions(
    builtin_model: Path, log_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Region]]:
    data = tmp_path_factory.mktemp("hotload-data")
    issuer = FakeIssuer(data)
    sidecar_ports = {name: free_port() for name in REGIONS}
    started: dict[str, Region] = {}
    try:
        for name in REGIONS:
            engine = start_engine(builtin_model, SERVED_AS[name], log_dir)
            args = ["--region", name, "--port", str(sidecar_ports[name]), "--engine", engine.url]
            args += [
                arg
                for other in REGIONS
                if other != name
                for arg in ("--peer", f"http://127.0.0.1:{sidecar_ports[other]}")
            ]
            env = {
                "SWITCHYARD_DATA_DIR": str(data),
                "SWITCHYARD_SYNC_ANTI_ENTROPY_INTERVAL_S": "0.3",
                "SWITCHYARD_SYNC_RECONCILE_INTERVAL_S": "0.3",
            } | issuer.sidecar_env()
            port = sidecar_ports[name]
            sidecar = ServerProcess("sync", args, port=port, log_dir=log_dir, env=env).wait_ready()
            pools = [{"name": f"pool-{name}", "region": name, "replicas": [engine.url]}]
            gateway_env = {"SWITCHYARD_POOLS": json.dumps(pools), "SWITCHYARD_REGION": name,
                           "SWITCHYARD_HEALTH_INTERVAL_S": "0.3", "SWITCHYARD_DATA_DIR": str(data)}  # fmt: skip
            port = free_port()
            gateway = ServerProcess("app", ["--port", str(port)], port=port, log_dir=log_dir, env=gateway_env)
            started[name] = Region(name, engine, sidecar, gateway.wait_ready(), issuer.headers("adapters"))
        yield started
    finally:
        for region in started.values():
            for process in (region.gateway, region.sidecar, region.engine):
                process.stop()


def _eventually(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.2)


def _models(region: Region) -> set[str]:
    return {card["id"] for card in httpx.get(region.gateway.url + "/v1/models", timeout=5).json()["data"]}


def _answer(region: Region, model: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 12,
            "temperature": 0}  # fmt: skip
    response = httpx.post(region.gateway.url + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def _sidecar_view(region: Region, name: str) -> dict[str, Any]:
    adapters = httpx.get(region.sidecar.url + "/adapters", timeout=5).json()["adapters"]
    return next((a for a in adapters if a["name"] == name), {})


def _loaded_everywhere(regions: dict[str, Region], name: str) -> bool:
    views = [_sidecar_view(r, name) for r in regions.values()]
    digests = {(v.get("served") or {}).get("digest") for v in views}
    if len(digests) != 1 or None in digests:
        return False
    [digest] = digests
    paths = [path for v in views for path in v["loaded"].values()]
    return all(path and path.endswith(str(digest)) for path in paths) and all(
        name in _models(r) for r in regions.values()
    )


def test_an_adapter_published_in_one_region_answers_alike_in_every_region(
    regions: dict[str, Region], adapters: list[Path]
) -> None:
    # The sidecars keep the default base_models; the adapter names the model's folder (PEFT
    # records where the model was loaded from), which the engines report as their model's root.
    published = regions["a"].publish("tuned", adapters[0])
    assert published.status_code == 201, published.text
    _eventually(lambda: _loaded_everywhere(regions, "tuned"), "tuned loaded in every region's engine")
    answers = {name: _answer(region, "tuned") for name, region in regions.items()}
    assert len(set(answers.values())) == 1, answers
    assert answers["a"] != _answer(regions["a"], MODEL)


def test_contributions_from_two_regions_are_stacked_alike(regions: dict[str, Region], adapters: list[Path]) -> None:
    for region, adapter, weight in (("a", adapters[0], 1.0), ("b", adapters[1], 0.5)):
        response = regions[region].publish("blend", adapter, weight=weight)
        assert response.status_code == 201, response.text
    _eventually(
        lambda: (
            _loaded_everywhere(regions, "blend") and len(_sidecar_view(regions["c"], "blend")["served"]["parts"]) == 2
        ),
        "the stack of a's and b's contributions loaded everywhere",
    )
    answers = {name: _answer(region, "blend") for name, region in regions.items()}
    assert len(set(answers.values())) == 1, answers
    assert answers["a"] != _answer(regions["a"], "tuned")  # b's part changes the answer


def test_a_restarted_engine_gets_its_adapters_back(
    regions: dict[str, Region], builtin_model: Path, log_dir: Path
) -> None:
    region = regions["c"]
    _eventually(lambda: "tuned" in _models(region), "tuned in c before the restart")
    expected = _answer(region, "tuned")
    port = int(region.engine.url.rsplit(":", 1)[1])
    region.engine.stop()
    region.engine = start_engine(builtin_model, SERVED_AS["c"], log_dir, port=port)
    _eventually(lambda: "tuned" in _models(region) and "blend" in _models(region), "the adapters back in c")
    assert _answer(region, "tuned") == expected


def _engine_models(region: Region) -> dict[str, str | None]:
    """What the engine itself lists: name -> parent (None for its base model)."""
    cards = httpx.get(region.engine.url + "/v1/models", timeout=5).json()["data"]
    return {card["id"]: card.get("parent") for card in cards}


def test_a_base_models_name_is_refused_and_never_leaves_a_staging_name(
    regions: dict[str, Region], adapters: list[Path]
) -> None:
    for name, code in ((MODEL, "name_reserved"), ("tuned@0123456789ab", "invalid_request")):
        refused = regions["a"].publish(name, adapters[0])
        assert refused.status_code == 400, refused.text
        assert (refused.json()["error"]["param"], refused.json()["error"]["code"]) == ("name", code)
    # c's sidecar knows its engine's base model names; a cannot know c's: a and b load it, c does not.
    at_c = regions["c"].publish(SERVED_AS["c"], adapters[0])
    assert (at_c.status_code, at_c.json()["error"]["code"]) == (400, "name_reserved"), at_c.text
    published = regions["a"].publish(SERVED_AS["c"], adapters[0])
    assert published.status_code == 201, published.text
    _eventually(
        lambda: (
            all(SERVED_AS["c"] in _engine_models(regions[r]) for r in ("a", "b"))
            and "base model" in str(_sidecar_view(regions["c"], SERVED_AS["c"]).get("problem"))
        ),
        "tiny-c loaded in a and b, refused in c",
    )
    for region in regions.values():
        assert not [name for name in _engine_models(region) if "@" in name], region.name
    assert _engine_models(regions["c"])[SERVED_AS["c"]] is None  # still c's base model
    retired = httpx.delete(f"{regions['a'].sidecar.url}/adapters/{SERVED_AS['c']}", headers=regions["a"].operator)
    assert retired.status_code == 200, retired.text
    _eventually(lambda: all(SERVED_AS["c"] not in _engine_models(regions[r]) for r in ("a", "b")), "retired")


def test_a_staging_name_left_in_an_engine_is_unloaded(regions: dict[str, Region]) -> None:
    region = regions["b"]
    _eventually(lambda: "tuned" in _models(region), "tuned in b")
    folder = _engine_models_paths(region)["tuned"]
    leaked = "tuned@" + Path(folder).name[:12]  # what a sidecar killed between load and move leaves
    loaded = httpx.post(region.engine.url + "/v1/load_lora_adapter",
                        json={"lora_name": leaked, "lora_path": folder}, timeout=30)  # fmt: skip
    assert loaded.status_code == 200, loaded.text
    _eventually(lambda: leaked not in _engine_models(region), "the staging name unloaded")
    assert "tuned" in _engine_models(region)


def _engine_models_paths(region: Region) -> dict[str, str]:
    cards = httpx.get(region.engine.url + "/v1/models", timeout=5).json()["data"]
    return {card["id"]: card["root"] for card in cards if card.get("parent")}
