"""A hostile tenant with a valid token, through a real gateway and a real engine: hundreds of
bad requests, none of which may hurt another tenant.

Each is refused with a 4xx in the envelope (at the gateway's edge where it can tell, else by
the engine before the request joins a batch); no replica is ejected for them; another
tenant's streams, running meanwhile on the same engine, all complete.
"""

import asyncio
import itertools
import json
from typing import Any

import httpx

from harness.servers import ServerProcess
from tests.conftest import MODEL

# What a tenant may send that is well-formed JSON but wrong: refused at the edge (bounds the
# gateway knows) or by the engine (its vocabulary and context, which only it knows).
BAD: list[tuple[str, dict[str, Any], str]] = [
    ("/v1/completions", {"prompt": [1, 2, 99_999_999]}, "prompt"),
    ("/v1/completions", {"prompt": [[5, 99_999_999]]}, "prompt"),
    ("/v1/completions", {"prompt": [1, -2, 3]}, "prompt"),
    ("/v1/completions", {"prompt": [7] * 100_000}, "prompt"),
    ("/v1/completions", {"prompt": "hi", "seed": 2**64}, "seed"),
    ("/v1/chat/completions", {"seed": -(2**63) - 1}, "seed"),
    ("/v1/chat/completions", {"temperature": 1e308}, "temperature"),
    ("/v1/chat/completions", {"top_p": -1}, "top_p"),
    ("/v1/chat/completions", {"presence_penalty": 3}, "presence_penalty"),
    ("/v1/chat/completions", {"logit_bias": {"5": 1000}}, "logit_bias"),
    ("/v1/chat/completions", {"max_tokens": 2**40}, "max_tokens"),
    ("/v1/chat/completions", {"max_tokens": 100_000}, "max_tokens"),
    ("/v1/chat/completions", {"stream": True, "seed": 2**64}, "seed"),
]
ROUNDS = 24  # 13 kinds x 24: 312 bad requests


def _body(path: str, fields: dict[str, Any]) -> dict[str, Any]:
    base: dict[str, Any] = {"model": MODEL, "user": "mallory", "max_tokens": 4}
    if path == "/v1/chat/completions":
        base["messages"] = [{"role": "user", "content": "hi"}]
    return base | fields


async def _good_stream(http: httpx.AsyncClient, seed: int, started: asyncio.Event) -> list[dict[str, Any]]:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"tell me a story {seed}"}],
        "user": "alice",
        "max_tokens": 160,
        "temperature": 1.0,
        "seed": seed,
        "stream": True,
    }
    events: list[dict[str, Any]] = []
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line == "data: [DONE]":
                return events
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
                started.set()
    raise AssertionError(f"the stream ended without [DONE]: {events[-1:]}")


async def _attack(http: httpx.AsyncClient) -> list[tuple[str, int, dict[str, Any]]]:
    limit = asyncio.Semaphore(16)

    async def send(path: str, fields: dict[str, Any], param: str) -> tuple[str, int, dict[str, Any]]:
        async with limit:
            answer = await http.post(path, json=_body(path, fields))
        return param, answer.status_code, answer.json()

    return await asyncio.gather(*(send(*bad) for bad in itertools.chain.from_iterable(itertools.repeat(BAD, ROUNDS))))


async def test_hundreds_of_bad_requests_hurt_nobody_else(gateway: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=120) as http:
        started = asyncio.Event()
        streams = [asyncio.ensure_future(_good_stream(http, seed, started)) for seed in range(4)]
        await asyncio.wait_for(started.wait(), 60)
        refused = await _attack(http)
        stories = await asyncio.gather(*streams)
        after = await http.post("/v1/chat/completions", json=_body("/v1/chat/completions", {}) | {"user": "bob"})
        status = (await http.get("/status")).json()

    assert len(refused) == len(BAD) * ROUNDS
    for param, code, payload in refused:
        assert code == 400, (param, code, payload)
        error = payload["error"]
        assert (error["type"], error["param"]) == ("invalid_request_error", param), payload
    for events in stories:  # every one of alice's streams ran to its end, no error among its events
        assert events
        assert not any("error" in event for event in events)
        assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert after.status_code == 200, after.text
    [pool] = status["pools"]
    for replica in pool["replicas"]:
        assert (replica["healthy"], replica["breaker"], replica["times_ejected"]) == (True, "closed", 0), replica
