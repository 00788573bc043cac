"""The hot-loading loop against the engine's own HTTP routes, in process, over a fake engine
that refuses the names it is told to: a refused move leaves no staging name loaded and is
tried again; staging names left behind are unloaded, also once their adapter is retired; a
name the engine serves as a base model is never loaded; engines found in DNS join (and get
every adapter) and leave, and a failing resolver changes nothing."""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from engines.server.api import create_app as create_engine_app
from harness.adapters import make_lora_adapter
from harness.dns_server import DnsServer
from harness.fake_nodes import RefusingEngine
from sync import crdt
from sync.node import SyncNode
from sync.peers import Peers
from sync.reconcile import Reconciler
from sync.settings import SyncSettings
from tests.conftest import MODEL

ENGINE_URL = "http://engine.fake:8100"


@dataclass
class Site:
    node: SyncNode
    engine: RefusingEngine
    reconciler: Reconciler

    def publish(self, name: str, folder: Path) -> None:
        self.node.publish(name, self.node.check(folder, at=self.node.clock.now(), base_model=MODEL))

    def staging(self) -> list[str]:
        return [name for name in self.engine.adapters if "@" in name]


@pytest.fixture(scope="module")
def adapter(builtin_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lora_adapter(builtin_model, tmp_path_factory.mktemp("reconcile") / "lora", rank=4)


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    settings = SyncSettings(region="x", engines=[ENGINE_URL], data_dir=tmp_path, base_models=[MODEL])
    node = SyncNode(settings)
    engine = RefusingEngine(model_name=MODEL)
    transport = httpx.ASGITransport(app=create_engine_app(engine, model_root="/models/tiny"))
    async with httpx.AsyncClient(transport=transport, timeout=5) as client:
        yield Site(node, engine, Reconciler(node, Peers(node, client), client))


async def test_a_refused_move_leaves_no_staging_name_and_is_tried_again(site: Site, adapter: Path) -> None:
    site.publish("tuned", adapter)
    site.engine.refuse.add("tuned")  # the staging name loads, the public name does not
    await site.reconciler.reconcile()
    assert site.engine.loads[0].startswith("tuned@")  # the staging name was loaded ...
    assert site.engine.adapters == {}  # ... and is gone again
    problem = site.reconciler.describe("tuned")["problem"]
    assert "refuses to load 'tuned'" in problem
    await site.reconciler.reconcile()
    assert site.engine.adapters == {}
    site.engine.refuse.clear()
    await site.reconciler.reconcile()
    assert list(site.engine.adapters) == ["tuned"]
    assert site.reconciler.describe("tuned")["problem"] is None


async def test_a_refused_staging_load_leaves_nothing_either(site: Site, adapter: Path) -> None:
    site.publish("tuned", adapter)
    await site.reconciler.reconcile()
    served = site.engine.adapters["tuned"]
    site.publish("other", adapter)
    recipe = crdt.recipe(site.node.state, "other")
    assert recipe is not None
    site.engine.refuse.add(f"other@{recipe.digest[:12]}")
    await site.reconciler.reconcile()
    assert site.engine.adapters == {"tuned": served}
    assert site.reconciler.describe("other")["problem"] is not None


async def test_leaked_staging_names_are_unloaded_also_after_a_retire(site: Site, adapter: Path) -> None:
    site.publish("tuned", adapter)
    await site.reconciler.reconcile()
    folder = site.engine.adapters["tuned"]
    # What a sidecar killed between loading a staging name and moving the public one leaves.
    site.engine.adapters[f"tuned@{Path(folder).name[:12]}"] = folder
    site.engine.adapters["tuned@000000000000"] = folder
    await site.reconciler.reconcile()
    assert site.engine.adapters == {"tuned": folder}
    site.engine.adapters["tuned@111111111111"] = folder
    site.node.retire("tuned")
    await site.reconciler.reconcile()
    assert site.engine.adapters == {}


async def test_adapters_loaded_by_someone_else_are_left_alone(site: Site, adapter: Path) -> None:
    site.engine.adapters |= {"manual": str(adapter), "manual@v2": str(adapter)}
    await site.reconciler.reconcile()
    assert set(site.engine.adapters) == {"manual", "manual@v2"}


async def test_a_name_the_engine_serves_as_a_base_model_is_never_loaded(site: Site, adapter: Path) -> None:
    site.publish(MODEL, adapter)  # as a peer that does not check names would send it
    await site.reconciler.reconcile()
    assert site.engine.loads == []
    assert "serves a base model named" in site.reconciler.describe(MODEL)["problem"]
    assert site.reconciler.base_models() == {MODEL: "/models/tiny"}


async def test_a_staging_name_from_a_peer_is_never_loaded(site: Site, adapter: Path) -> None:
    site.publish("tuned@0123456789ab", adapter)  # the API refuses '@'; a peer's delta is not checked there
    await site.reconciler.reconcile()
    assert site.engine.loads == []
    assert "reserved for staging names" in site.reconciler.describe("tuned@0123456789ab")["problem"]


async def test_engines_found_in_dns_join_and_leave_and_a_failing_resolver_changes_nothing(
    tmp_path: Path, adapter: Path
) -> None:
    with DnsServer() as dns:
        dns.set("engines.eu.svc.cluster.local", ["10.0.0.1", "10.0.0.2"])
        settings = SyncSettings(
            region="x",
            engines=[ENGINE_URL],
            engines_dns="engines.eu.svc.cluster.local",
            nameservers=[dns.address],
            data_dir=tmp_path,
            base_models=[MODEL],
        )
        node = SyncNode(settings)
        engine = RefusingEngine(model_name=MODEL)  # every URL reaches this one engine, in process
        transport = httpx.ASGITransport(app=create_engine_app(engine, model_root="/models/tiny"))
        async with httpx.AsyncClient(transport=transport, timeout=5) as client:
            reconciler = Reconciler(node, Peers(node, client), client)
            node.publish("tuned", node.check(adapter, at=node.clock.now(), base_model=MODEL))
            await reconciler.reconcile()
            found = [ENGINE_URL, "http://10.0.0.1:8100", "http://10.0.0.2:8100"]
            assert [view.url for view in reconciler.engines] == found
            assert all(view.loaded.get("tuned") for view in reconciler.engines)  # each got the adapter
            kept = reconciler.engines[2]
            dns.set("engines.eu.svc.cluster.local", ["10.0.0.2"])  # scaled in
            await reconciler.reconcile()
            assert [view.url for view in reconciler.engines] == [ENGINE_URL, "http://10.0.0.2:8100"]
            assert reconciler.engines[1] is kept  # what it knew of an engine that stayed, kept
            dns.failing = True
            await reconciler.reconcile()
            assert [view.url for view in reconciler.engines] == [ENGINE_URL, "http://10.0.0.2:8100"]
            dns.failing = False
            dns.set("engines.eu.svc.cluster.local", ["fd00::2"])  # an IPv6-only cluster
            await reconciler.reconcile()
            assert [view.url for view in reconciler.engines] == [ENGINE_URL, "http://[fd00::2]:8100"]
            dns.records.clear()  # no pod is ready: only the settings' own engine
            await reconciler.reconcile()
            assert [view.url for view in reconciler.engines] == [ENGINE_URL]
