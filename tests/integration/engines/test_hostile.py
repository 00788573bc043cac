"""A hostile tenant against a real engine process: bad values are 400s naming the field, and
nobody else's generation notices.

The engine is the session's real Transformers engine on the built-in model; the streams
of other tenants run in its batch while the bad requests arrive.
"""

import asyncio
import json
import time
from typing import Any

import httpx
import pytest

from harness.servers import ServerProcess
from tests.conftest import MODEL

OUT_OF_VOCABULARY = [1, 2, 99999999]


def _completion(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "Hello", "max_tokens": 2, **fields}


async def _stream(http: httpx.AsyncClient, started: asyncio.Event, seed: int) -> tuple[list[dict[str, Any]], float]:
    """One tenant's stream: its events, and when [DONE] arrived."""
    body = _completion(max_tokens=96, temperature=1.0, seed=seed, stream=True, stream_options={"include_usage": True})
    events: list[dict[str, Any]] = []
    async with http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                return events, time.monotonic()
            events.append(json.loads(line.removeprefix("data: ")))
            started.set()
    raise AssertionError(f"the stream ended without [DONE] after {events[-1:]}")


async def test_bad_requests_are_refused_while_other_streams_complete(engine: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=engine.url, timeout=60) as http:
        starts = [asyncio.Event() for _ in range(4)]
        streams = [asyncio.ensure_future(_stream(http, started, seed)) for seed, started in enumerate(starts)]
        await asyncio.wait_for(asyncio.gather(*(s.wait() for s in starts)), 30)
        bad = [
            _completion(prompt=OUT_OF_VOCABULARY),
            _completion(prompt=OUT_OF_VOCABULARY, stream=True),
            _completion(prompt=[[5, 99999999]]),
            _completion(prompt=[1, -2, 3]),
            _completion(seed=2**64),
            _completion(seed=-(2**63) - 1, stream=True),
        ]
        answers = await asyncio.gather(*(http.post("/v1/completions", json=body) for body in bad))
        refused_at = time.monotonic()
        results = await asyncio.gather(*streams)
    for body, answer in zip(bad, answers, strict=True):
        assert answer.status_code == 400, (body, answer.text)
        error = answer.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["param"] == ("seed" if "seed" in body else "prompt"), error
    assert "99999999" in answers[0].json()["error"]["message"]
    for events, done_at in results:
        assert all("error" not in event for event in events), events
        assert done_at > refused_at, "every stream was still running when the bad requests were refused"
        finish = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
        assert finish in (["length"], ["stop"])
        usage = events[-1]["usage"]
        assert finish == ["stop"] or usage["completion_tokens"] == 96


@pytest.mark.parametrize("seed", [2**63 - 1, -(2**63), 0])
async def test_every_64_bit_seed_works_and_repeats(engine: ServerProcess, seed: int) -> None:
    body = _completion(max_tokens=8, temperature=1.0, seed=seed)
    async with httpx.AsyncClient(base_url=engine.url, timeout=60) as http:
        first, second = [await http.post("/v1/completions", json=body) for _ in range(2)]
    assert first.status_code == 200, first.text
    assert first.json()["choices"][0]["text"] == second.json()["choices"][0]["text"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 2**31}, "max_tokens"),
        ({"presence_penalty": 2.1}, "presence_penalty"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"logit_bias": {"-5": 1}}, "logit_bias"),
        ({"logprobs": 6}, "logprobs"),
        ({"best_of": 21}, "best_of"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"prompt": [2**31]}, "prompt"),
    ],
)
async def test_out_of_range_fields_name_themselves(engine: ServerProcess, fields: dict[str, Any], param: str) -> None:
    async with httpx.AsyncClient(base_url=engine.url, timeout=30) as http:
        answer = await http.post("/v1/completions", json=_completion(**fields))
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param
    assert answer.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "fields",
    [
        {"temperature": 1e-300},  # dividing the logits by it overflows: sampled greedily instead
        {"temperature": 2.0, "top_p": 0.0},  # top_p 0 keeps the most likely token, not none
        {"temperature": 0.0},
    ],
)
async def test_extreme_sampling_values_answer_greedily(engine: ServerProcess, fields: dict[str, Any]) -> None:
    async with httpx.AsyncClient(base_url=engine.url, timeout=30) as http:
        greedy = await http.post("/v1/completions", json=_completion(max_tokens=8, temperature=0.0))
        extreme = await http.post("/v1/completions", json=_completion(max_tokens=8, seed=1, **fields))
    assert extreme.status_code == 200, extreme.text
    assert extreme.json()["choices"][0]["text"] == greedy.json()["choices"][0]["text"]


async def test_the_last_id_of_the_vocabulary_is_accepted_and_the_next_refused(engine: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=engine.url, timeout=30) as http:
        refused = await http.post("/v1/completions", json=_completion(prompt=[1, 10**6]))
        # The message says where the vocabulary ends; the id just below that end is served.
        last = int(refused.json()["error"]["message"].rsplit(" ", 1)[1].rstrip("."))
        served = await http.post("/v1/completions", json=_completion(prompt=[1, last], echo=True))
        beyond = await http.post("/v1/completions", json=_completion(prompt=[1, last + 1]))
    assert refused.status_code == 400
    assert served.status_code == 200, served.text
    assert beyond.status_code == 400
    assert beyond.json()["error"]["param"] == "prompt"
