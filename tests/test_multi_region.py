"""Three regions of real engine processes on loopback behind one gateway in region `eu`.

eu has two replicas (saturated at load 2 each), us one (10 ms away), ap one (50 ms away).
Each test leaves every engine up and every replica undrained for the next.
"""

import itertools
import json
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from harness.servers import ServerProcess, free_port
from router import HashRing, routing_key, stable_hash
from tests.conftest import MODEL, start_engine

EJECTION_S = 1.0


class Regions:
    def __init__(self, model: Path, log_dir: Path) -> None:
        self.model, self.log_dir = model, log_dir
        self.engines = {
            "eu-0": start_engine(model, MODEL, log_dir),
            "eu-1": start_engine(model, MODEL, log_dir),
            "us-0": start_engine(model, MODEL, log_dir),
            "ap-0": start_engine(model, MODEL, log_dir),
        }

    def kill(self, replica_id: str) -> None:
        self.engines[replica_id].stop(signal.SIGKILL)

    def restart(self, replica_id: str) -> None:
        port = int(self.engines[replica_id].url.rsplit(":", 1)[1])
        self.engines[replica_id] = start_engine(self.model, MODEL, self.log_dir, port=port)

    def stop(self) -> None:
        for engine in self.engines.values():
            engine.stop()


@pytest.fixture(scope="module")
def regions(builtin_model: Path, log_dir: Path) -> Iterator[Regions]:
    started = Regions(builtin_model, log_dir)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def gateway(regions: Regions, log_dir: Path) -> Iterator[ServerProcess]:
    urls = {name: engine.url for name, engine in regions.engines.items()}
    pools = [
        {"name": "eu", "region": "eu", "replicas": [urls["eu-0"], urls["eu-1"]], "max_load": 2},
        {"name": "us", "region": "us", "replicas": [urls["us-0"]]},
        {"name": "ap", "region": "ap", "replicas": [urls["ap-0"]]},
    ]
    env = {
        "SWITCHYARD_POOLS": json.dumps(pools),
        "SWITCHYARD_REGION": "eu",
        "SWITCHYARD_REGION_LATENCIES_MS": json.dumps({"us": 10.0, "ap": 50.0}),
        "SWITCHYARD_HEALTH_INTERVAL_S": "0.3",
        "SWITCHYARD_STATS_INTERVAL_S": "0.3",
        "SWITCHYARD_EJECT_AFTER_FAILURES": "1",
        "SWITCHYARD_EJECT_BASE_S": str(EJECTION_S),
    }
    port = free_port()
    server = ServerProcess("app", ["--port", str(port)], port=port, log_dir=log_dir, env=env, ready_path="/ready")
    yield server.wait_ready()
    server.stop()


def _chat(gateway: ServerProcess, session: str, **fields: object) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2} | fields
    return httpx.post(gateway.url + "/v1/chat/completions", json=body, headers={"x-session-id": session}, timeout=30)


def _route(response: httpx.Response) -> tuple[str, str]:
    assert response.status_code == 200, response.text
    return response.headers["x-route-region"], response.headers["x-route-replica"]


def _replicas(gateway: ServerProcess) -> dict[str, dict[str, object]]:
    pools = httpx.get(gateway.url + "/admin/pools", timeout=5).json()["pools"]
    return {replica["id"]: replica for pool in pools for replica in pool["replicas"]}


def _wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def _all_back(gateway: ServerProcess) -> bool:
    return all(r["healthy"] and r["breaker"] == "closed" for r in _replicas(gateway).values())


def _session_on(gateway: ServerProcess, replica_id: str) -> str:
    """A session id whose home is `replica_id`."""
    for i in range(200):
        if _route(_chat(gateway, f"probe-{i}"))[1] == replica_id:
            return f"probe-{i}"
    raise AssertionError(f"no session lands on {replica_id}")


def _open_stream(stack: ExitStack, gateway: ServerProcess, session: str) -> tuple[str, str]:
    """A long stream, started and left open; its route."""
    # Seeded: unseeded sampling from a random model may reach end-of-sequence early.
    body = {"model": MODEL, "messages": [{"role": "user", "content": "go"}], "max_tokens": 1500, "seed": 7}
    response = stack.enter_context(
        httpx.stream(
            "POST",
            gateway.url + "/v1/chat/completions",
            json=body | {"stream": True},
            headers={"x-session-id": session},
            timeout=60,
        )
    )
    lines = response.iter_lines()
    stack.callback(lambda: lines)  # kept alive: a dropped line iterator closes the stream
    next(line for line in lines if '"content":"' in line)
    return response.headers["x-route-region"], response.headers["x-route-replica"]


def test_requests_stay_in_the_own_region_with_session_affinity(gateway: ServerProcess) -> None:
    routes = [_route(_chat(gateway, f"user-{i}")) for i in range(20)]
    assert {region for region, _ in routes} == {"eu"}
    assert {replica for _, replica in routes} == {"eu-0", "eu-1"}
    for i in range(5):
        assert {_route(_chat(gateway, f"user-{i}")) for _ in range(3)} == {routes[i]}
    assert ": affinity (key session:" in gateway.output()  # each decision is logged, explained


def test_a_saturated_region_spills_to_the_next_nearest(gateway: ServerProcess) -> None:
    with ExitStack() as streams:
        opened = [_open_stream(streams, gateway, f"long-{i}") for i in range(4)]
        assert sorted(opened) == [("eu", "eu-0"), ("eu", "eu-0"), ("eu", "eu-1"), ("eu", "eu-1")]
        spilled = _chat(gateway, "one-more")
        assert _route(spilled) == ("us", "us-0")
    _wait_for(lambda: _route(_chat(gateway, "one-more"))[0] == "eu")


def test_own_region_down_is_served_by_the_next_region_without_client_errors(
    gateway: ServerProcess, regions: Regions
) -> None:
    regions.kill("eu-0")
    regions.kill("eu-1")
    try:
        routes = [_route(_chat(gateway, f"user-{i}")) for i in range(10)]  # _route asserts each is a 200
        assert set(routes) == {("us", "us-0")}
    finally:
        regions.restart("eu-0")
        regions.restart("eu-1")
    _wait_for(lambda: _all_back(gateway))
    assert _route(_chat(gateway, "user-0"))[0] == "eu"  # remembered in us, but the own region comes first


def _sessions_homed_on(gateway: ServerProcess, replica_id: str, count: int) -> Iterator[str]:
    """Fresh session ids whose ring home is `replica_id` (computed, not sent: the gateway
    remembers where each key went last, so a probing request would move it)."""
    replicas = _replicas(gateway)
    eu = [str(r["url"]) for r in replicas.values() if str(r["id"]).startswith("eu-")]
    ring, target = HashRing(eu), str(replicas[replica_id]["url"])
    found = 0
    for i in itertools.count():
        session = f"fresh-{replica_id}-{i}"
        key = routing_key(model=MODEL, session_id=session, user=None, prompt_head="")
        if ring.owner(stable_hash(key)) == target:
            found += 1
            yield session
            if found == count:
                return


def test_a_recovered_replica_returns_after_its_half_open_probe(gateway: ServerProcess, regions: Regions) -> None:
    sessions = _sessions_homed_on(gateway, "eu-0", 500)
    before = _replicas(gateway)["eu-0"]["times_ejected"]
    assert isinstance(before, int)
    regions.kill("eu-0")
    try:
        assert _route(_chat(gateway, next(sessions))) == ("eu", "eu-1")  # the connect error fails over at once
        ejected = _replicas(gateway)["eu-0"]
        assert ejected["breaker"] == "open"
        assert isinstance(ejected["times_ejected"], int)
        assert ejected["times_ejected"] > before
    finally:
        regions.restart("eu-0")
    # Healthy again by its probes, then back in rotation once its half-open probe passes:
    # new keys whose home it is go to it again.
    _wait_for(lambda: _route(_chat(gateway, next(sessions))) == ("eu", "eu-0"))
    assert _replicas(gateway)["eu-0"]["breaker"] == "closed"


def test_admin_api_adds_a_checked_replica_that_takes_traffic(
    gateway: ServerProcess, regions: Regions, builtin_model: Path, log_dir: Path
) -> None:
    newcomer = start_engine(builtin_model, MODEL, log_dir)
    stranger = start_engine(builtin_model, "another-model", log_dir)
    admin = gateway.url + "/admin/pools"
    try:
        refused = httpx.post(f"{admin}/eu/replicas", json={"url": f"http://127.0.0.1:{free_port()}"})
        assert refused.status_code == 422
        assert refused.json()["error"]["code"] == "replica_unreachable"
        mismatch = httpx.post(f"{admin}/eu/replicas", json={"url": stranger.url})
        assert mismatch.status_code == 422
        assert mismatch.json()["error"]["code"] == "model_mismatch"
        assert MODEL in mismatch.json()["error"]["message"]
        assert httpx.post(f"{admin}/nowhere/replicas", json={"url": newcomer.url}).status_code == 404
        assert httpx.post(f"{admin}/eu/replicas", json={"url": "not a url"}).status_code == 400
        assert httpx.post(f"{admin}/eu/replicas", json={"url": regions.engines["us-0"].url}).status_code == 409

        added = httpx.post(f"{admin}/eu/replicas", json={"url": newcomer.url})
        assert added.status_code == 201, added.text
        new_id = added.json()["id"]
        assert (new_id, added.json()["healthy"]) == ("eu-2", True)
        replicas = {_route(_chat(gateway, f"after-{i}"))[1] for i in range(30)}
        assert replicas == {"eu-0", "eu-1", "eu-2"}

        removed = httpx.delete(f"{admin}/eu/replicas/{new_id}")
        assert (removed.status_code, removed.json()["status"]) == (200, "removed")
        assert new_id not in _replicas(gateway)
        assert {_route(_chat(gateway, f"after-{i}"))[1] for i in range(30)} == {"eu-0", "eu-1"}
    finally:
        newcomer.stop()
        stranger.stop()


def test_a_drained_replica_finishes_its_streams_and_gets_no_new_ones(gateway: ServerProcess) -> None:
    """Last in this module: it removes eu-1 (re-added at the end under a new id)."""
    session = _session_on(gateway, "eu-1")
    url = str(_replicas(gateway)["eu-1"]["url"])
    admin = gateway.url + "/admin/pools/eu/replicas"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "go"}], "max_tokens": 400, "seed": 7}
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        json=body | {"stream": True},
        headers={"x-session-id": session},
        timeout=60,
    ) as stream:
        assert stream.headers["x-route-replica"] == "eu-1"
        lines = stream.iter_lines()
        next(line for line in lines if '"content":"' in line)
        drained = httpx.post(f"{admin}/eu-1/drain")
        assert drained.json()["draining"] is True
        assert {_route(_chat(gateway, session))[1] for _ in range(3)} == {"eu-0"}
        removing = httpx.delete(f"{admin}/eu-1")
        assert (removing.status_code, removing.json()["status"]) == (202, "draining")
        assert "eu-1" in _replicas(gateway)  # still there while its stream runs
        rest = [line for line in lines if line]
    assert rest[-1] == "data: [DONE]"
    assert not any('"error"' in line for line in rest)
    _wait_for(lambda: "eu-1" not in _replicas(gateway), timeout=5)
    readded = httpx.post(gateway.url + "/admin/pools/eu/replicas", json={"url": url})
    assert (readded.status_code, readded.json()["id"]) == (201, "eu-3")  # ids are never reused
