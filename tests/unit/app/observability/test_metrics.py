"""The gateway's Prometheus metrics (app/observability/metrics.py), through a gateway in process
over two counting engines: what each kind of answer adds, with bounded labels only."""

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.counting_engine import MODEL, CountingEngine
from harness.inprocess import InProcessGateway, counting_engines, gateway_in_process, pool_settings

CHAT = "/v1/chat/completions"
A, B = "http://engine-a", "http://engine-b"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Metered:
    """The gateway (pool `p` in region `eu`: replicas p-0 and p-1 that take one request each,
    no queue), its engines, and its scrapes."""

    def __init__(self, gateway: InProcessGateway, engines: list[CountingEngine]) -> None:
        self.gateway = gateway
        self.engines = engines

    async def scrape(self) -> Samples:
        response = await self.gateway.client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
        }

    async def chat(self, model: str = MODEL, **fields: object) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, **fields}
        return await self.gateway.client.post(CHAT, json=body)

    def behave(self, **behaviour: object) -> None:
        for engine in self.engines:
            engine.behave(**behaviour)


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
async def metered() -> AsyncIterator[Metered]:
    engines, apps = counting_engines([A, B])
    settings = pool_settings([A, B], pool={"region": "eu", "max_load": 1}, region="eu", max_queue=0)
    async with gateway_in_process(settings, apps) as gateway:
        yield Metered(gateway, [engines[A], engines[B]])


async def test_answers_are_counted_and_timed_by_route_model_and_status_class(metered: Metered) -> None:
    before = await metered.scrape()
    for _ in range(3):
        assert (await metered.chat()).status_code == 200
    metered.behave(chunk_delay_s=0.02)  # tokens 20 ms apart, so each is relayed on its own
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 4, "stream": True}
    assert (await metered.gateway.client.post(CHAT, json=body)).status_code == 200
    metered.behave()
    assert (await metered.chat(model="no-such-model")).status_code == 404
    after = await metered.scrape()

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


async def test_engine_failures_retries_and_live_gauges(metered: Metered) -> None:
    before = await metered.scrape()
    first = metered.engines[0]
    first.behave(fail_times=1, fail_status=503)
    # Requests with other keys until one lands on the failing replica and is retried on the other.
    for i in range(20):
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"m{i}"}], "max_tokens": 2}
        assert (await metered.gateway.client.post(CHAT, json=body)).status_code == 200
        if first.received > sum(first.executed.values()):  # one was refused there
            break
    else:
        pytest.fail("no request reached the first replica")
    after = await metered.scrape()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("llm_engine_errors_total", pool="p", region="eu", kind="overloaded") == 1
    assert delta("llm_retries_total", pool="p") == 1
    assert ("llm_queue_depth", frozenset()) in after
    states = {dict(labels)["replica"]: v for (name, labels), v in after.items() if name == "llm_breaker_state"}
    assert states == {"p-0": 0.0, "p-1": 0.0}


async def test_an_engines_plain_500_is_counted_as_a_server_error(metered: Metered) -> None:
    before = await metered.scrape()
    metered.behave(fail_times=1, fail_status=500)
    assert (await metered.chat()).status_code == 500  # not retried: a 500 may have done work
    after = await metered.scrape()
    labels = {"pool": "p", "region": "eu", "kind": "server_error"}
    assert value(after, "llm_engine_errors_total", **labels) - value(before, "llm_engine_errors_total", **labels) == 1


async def test_a_500_the_engine_marks_as_one_requests_failure_is_a_4xx_and_no_engine_error(
    metered: Metered,
) -> None:
    before = await metered.scrape()
    metered.behave(fail_times=1, fail_status=500, fail_code="sequence_failed")
    answer = await metered.chat()
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "sequence_failed")
    after = await metered.scrape()
    for kind in ("server_error", "overloaded", "connect"):
        labels = {"pool": "p", "region": "eu", "kind": kind}
        assert value(after, "llm_engine_errors_total", **labels) == value(before, "llm_engine_errors_total", **labels)
    states = {dict(labels)["replica"]: v for (name, labels), v in after.items() if name == "llm_breaker_state"}
    assert set(states.values()) == {0.0}


async def test_sheds_are_counted_by_reason(metered: Metered) -> None:
    before = await metered.scrape()
    metered.behave(chunks=5, chunk_delay_s=0.2)
    # Two streams fill both replicas (max_load 1 each, no queue): the third is shed.
    opened = []
    for i in range(2):
        body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": f"s{i}"}]}
        opened.append(asyncio.create_task(metered.gateway.client.post(CHAT, json=body)))
    deadline = time.monotonic() + 10
    while sum(sum(engine.executed.values()) for engine in metered.engines) < 2:  # both streams begun
        assert time.monotonic() < deadline, "the streams never reached the engines"
        await asyncio.sleep(0.01)
    shed = await metered.chat()
    assert [stream.status_code for stream in await asyncio.gather(*opened)] == [200, 200]
    assert shed.status_code == 503
    after = await metered.scrape()
    assert (
        value(after, "llm_shed_total", reason="overloaded") - value(before, "llm_shed_total", reason="overloaded") == 1
    )
