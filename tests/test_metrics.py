"""The gateway's Prometheus metrics through a real gateway and counting engines: what each
kind of answer adds, with bounded labels only."""

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.scrape import scrape, value
from harness.servers import ServerProcess, free_port

MODEL = "counting"
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def engines(log_dir: Path) -> Iterator[list[ServerProcess]]:
    started = []
    for _ in range(2):
        port = free_port()
        args = ["--port", str(port)]
        started.append(ServerProcess("harness.counting_engine", args, port=port, log_dir=log_dir).wait_ready())
    yield started
    for engine in started:
        engine.stop()


@pytest.fixture(scope="module")
def gateway(engines: list[ServerProcess], log_dir: Path) -> Iterator[ServerProcess]:
    pools = [{"name": "p", "region": "eu", "replicas": [e.url for e in engines], "max_load": 1}]
    env = {"SWITCHYARD_POOLS": json.dumps(pools), "SWITCHYARD_REGION": "eu", "SWITCHYARD_MAX_QUEUE": "0"}
    port = free_port()
    server = ServerProcess("app", ["--port", str(port)], port=port, log_dir=log_dir, env=env, ready_path="/ready")
    yield server.wait_ready()
    server.stop()


def _chat(gateway: ServerProcess, model: str = MODEL, **fields: object) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, **fields}
    return httpx.post(gateway.url + CHAT, json=body, timeout=30)


def test_answers_are_counted_and_timed_by_route_model_and_status_class(
    gateway: ServerProcess, engines: list[ServerProcess]
) -> None:
    before = scrape(gateway.url)
    for _ in range(3):
        assert _chat(gateway).status_code == 200
    for engine in engines:  # tokens 20 ms apart, so each is relayed on its own
        httpx.post(engine.url + "/control", json={"chunk_delay_s": 0.02}).raise_for_status()
    try:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 4, "stream": True}
        with httpx.stream("POST", gateway.url + CHAT, json=body) as stream:
            assert stream.status_code == 200
            stream.read()
    finally:
        for engine in engines:
            httpx.post(engine.url + "/control", json={}).raise_for_status()
    assert _chat(gateway, model="no-such-model").status_code == 404
    after = scrape(gateway.url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ok = {"route": CHAT, "model": MODEL, "status_class": "2xx"}
    assert delta("llm_requests_total", **ok) == 4
    assert delta("llm_request_duration_seconds_count", **ok) == 4
    # A model nobody serves is `other`: clients cannot make label values up.
    assert delta("llm_requests_total", route=CHAT, model="other", status_class="4xx") == 1
    assert not any(("no-such-model" in dict(labels).values()) for _, labels in after)
    served = {"model": MODEL, "pool": "p", "region": "eu"}
    assert delta("llm_time_to_first_token_seconds_count", **served) == 1
    assert delta("llm_inter_token_latency_seconds_count", **served) == 3  # 4 tokens: 3 gaps ([DONE] is none)
    assert delta("llm_generation_tokens_count", **served) == 4  # 3 whole answers and 1 stream
    assert delta("llm_generation_tokens_sum", **served) == 3 * 5 + 4
    assert value(after, "llm_requests_in_progress", route=CHAT) == 0


def test_engine_failures_retries_and_live_gauges(gateway: ServerProcess, engines: list[ServerProcess]) -> None:
    before = scrape(gateway.url)
    httpx.post(engines[0].url + "/control", json={"fail_times": 1, "fail_status": 503}).raise_for_status()
    try:  # requests with other keys until one lands on the failing replica and is retried on the other
        for i in range(20):
            body = {"model": MODEL, "messages": [{"role": "user", "content": f"m{i}"}], "max_tokens": 2}
            assert httpx.post(gateway.url + CHAT, json=body, timeout=30).status_code == 200
            counts = httpx.get(engines[0].url + "/executions").json()
            if counts["received"] > counts["total"]:  # one was refused there
                break
        else:
            pytest.fail("no request reached the first replica")
    finally:
        httpx.post(engines[0].url + "/control", json={}).raise_for_status()
    after = scrape(gateway.url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("llm_engine_errors_total", pool="p", region="eu", kind="overloaded") == 1
    assert delta("llm_retries_total", pool="p") == 1
    assert ("llm_queue_depth", frozenset()) in after
    states = {dict(labels)["replica"]: v for (name, labels), v in after.items() if name == "llm_breaker_state"}
    assert states == {"p-0": 0.0, "p-1": 0.0}


def test_an_engines_plain_500_is_counted_as_a_server_error(
    gateway: ServerProcess, engines: list[ServerProcess]
) -> None:
    before = scrape(gateway.url)
    for engine in engines:
        httpx.post(engine.url + "/control", json={"fail_times": 1, "fail_status": 500}).raise_for_status()
    try:
        assert _chat(gateway).status_code == 500  # not retried: a 500 may have done work
    finally:
        for engine in engines:
            httpx.post(engine.url + "/control", json={}).raise_for_status()
    after = scrape(gateway.url)
    labels = {"pool": "p", "region": "eu", "kind": "server_error"}
    assert value(after, "llm_engine_errors_total", **labels) - value(before, "llm_engine_errors_total", **labels) == 1


def test_a_500_the_engine_marks_as_one_requests_failure_is_a_4xx_and_no_engine_error(
    gateway: ServerProcess, engines: list[ServerProcess]
) -> None:
    before = scrape(gateway.url)
    for engine in engines:
        control = {"fail_times": 1, "fail_status": 500, "fail_code": "sequence_failed"}
        httpx.post(engine.url + "/control", json=control).raise_for_status()
    try:
        answer = _chat(gateway)
    finally:
        for engine in engines:
            httpx.post(engine.url + "/control", json={}).raise_for_status()
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "sequence_failed")
    after = scrape(gateway.url)
    for kind in ("server_error", "overloaded", "connect"):
        labels = {"pool": "p", "region": "eu", "kind": kind}
        assert value(after, "llm_engine_errors_total", **labels) == value(before, "llm_engine_errors_total", **labels)
    states = {dict(labels)["replica"]: v for (name, labels), v in after.items() if name == "llm_breaker_state"}
    assert set(states.values()) == {0.0}


def test_sheds_are_counted_by_reason(gateway: ServerProcess, engines: list[ServerProcess]) -> None:
    before = scrape(gateway.url)
    for engine in engines:
        httpx.post(engine.url + "/control", json={"chunks": 5, "chunk_delay_s": 0.2}).raise_for_status()
    try:
        with httpx.Client(timeout=30) as client:
            # Two streams fill both replicas (max_load 1 each, no queue): the third is shed.
            opened = []
            for i in range(2):
                body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": f"s{i}"}]}
                opened.append(client.send(client.build_request("POST", gateway.url + CHAT, json=body), stream=True))
            shed = _chat(gateway)
            for stream in opened:
                stream.read()
                stream.close()
    finally:
        for engine in engines:
            httpx.post(engine.url + "/control", json={}).raise_for_status()
    assert shed.status_code == 503
    after = scrape(gateway.url)
    assert (
        value(after, "llm_shed_total", reason="overloaded") - value(before, "llm_shed_total", reason="overloaded") == 1
    )
