"""OpenAI chat and text completions over an engine (the fake one): shapes, limits, stop strings,
streams, and the requests refused before they reach the engine."""

import json
from collections.abc import AsyncGenerator

import httpx
import pytest

from engines.base import EngineOverloaded, GenerationRequest, TokenChunk
from engines.fake import FakeEngine
from engines.server.api import create_app


def _chat(**extra: object) -> dict[str, object]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], **extra}


async def test_chat_completion_shape(client: httpx.AsyncClient, fake: FakeEngine) -> None:
    answer = (await client.post("/v1/chat/completions", json=_chat(max_tokens=40))).json()
    assert answer["object"] == "chat.completion"
    assert answer["id"].startswith("chatcmpl-")
    assert answer["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello world. Bye."},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]
    prompt_tokens = len(fake.encode_chat([{"role": "user", "content": "hi"}]))
    assert answer["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 17,
        "total_tokens": prompt_tokens + 17,
    }


async def test_length_and_stop(client: httpx.AsyncClient) -> None:
    cut = (await client.post("/v1/chat/completions", json=_chat(max_tokens=5))).json()
    assert cut["choices"][0]["message"]["content"] == "Hello"
    assert cut["choices"][0]["finish_reason"] == "length"
    stopped = (await client.post("/v1/chat/completions", json=_chat(stop=[". "]))).json()
    assert stopped["choices"][0]["message"]["content"] == "Hello world"
    assert stopped["choices"][0]["finish_reason"] == "stop"


async def test_sampling_parameters_reach_the_engine(client: httpx.AsyncClient, fake: FakeEngine) -> None:
    await client.post("/v1/chat/completions", json=_chat(temperature=0, top_p=0.5, seed=3, max_completion_tokens=4))
    request = fake.requests[-1]
    assert (request.temperature, request.top_p, request.seed, request.max_new_tokens) == (0, 0.5, 3, 4)


async def test_default_token_limit_is_the_rest_of_the_context(client: httpx.AsyncClient, fake: FakeEngine) -> None:
    await client.post("/v1/completions", json={"model": "fake-model", "prompt": "abc"})
    assert fake.requests[-1].max_new_tokens == 64 - 3


async def test_stream_with_usage(client: httpx.AsyncClient) -> None:
    body = _chat(stream=True, stream_options={"include_usage": True}, stop="world")
    response = await client.post("/v1/chat/completions", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [e.removeprefix("data: ") for e in response.text.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Hello "
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == len("Hello world"), "tokens up to the stop were generated"


async def test_completion_echo_and_stream(client: httpx.AsyncClient) -> None:
    echoed = (await client.post("/v1/completions", json={"model": "fake-model", "prompt": "Q:", "echo": True})).json()
    assert echoed["choices"][0]["text"] == "Q:Hello world. Bye."
    response = await client.post("/v1/completions", json={"model": "fake-model", "prompt": "Q:", "stream": True})
    chunks = [json.loads(e[6:]) for e in response.text.split("\n\n") if e.startswith("data: {")]
    assert "".join(c["choices"][0]["text"] for c in chunks) == "Hello world. Bye."
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (_chat(model="other"), 404, "model"),
        (_chat(n=2), 400, "n"),
        (_chat(presence_penalty=0.5), 400, "presence_penalty"),
        (_chat(logprobs=True), 400, "logprobs"),
        (_chat(response_format={"type": "json_object"}), 400, "response_format"),
        (_chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), 400, "messages[0].content"),
        (_chat(messages=[{"role": "user", "content": "x" * 80}]), 400, "messages"),
        (_chat(max_tokens=60), 400, "max_tokens"),
    ],
)
async def test_refusals(client: httpx.AsyncClient, body: dict[str, object], status: int, param: str) -> None:
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == status
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize(
    ("prompt", "message"),
    [([72, 256], "Token id 256 is out of vocabulary"), ([[1, 2, 300]], "Token id 300")],
)
async def test_prompt_ids_outside_the_vocabulary_are_refused(
    client: httpx.AsyncClient, fake: FakeEngine, prompt: object, message: str
) -> None:
    answer = await client.post("/v1/completions", json={"model": "fake-model", "prompt": prompt})
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "prompt"
    assert answer.json()["error"]["message"].startswith(message)
    assert fake.requests == [], "refused before reaching the engine"


@pytest.mark.parametrize(
    ("fields", "param"),
    [({"best_of": 2}, "best_of"), ({"logprobs": 1}, "logprobs"), ({"logit_bias": {"5": 1}}, "logit_bias")],
)
async def test_fields_this_engine_does_not_implement_are_refused(
    client: httpx.AsyncClient, fields: dict[str, object], param: str
) -> None:
    answer = await client.post(
        "/v1/completions", json={"model": "fake-model", "prompt": "hi", "stream": False, **fields}
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == param


async def test_neutral_values_of_unimplemented_fields_are_accepted(client: httpx.AsyncClient) -> None:
    neutral = {"best_of": 1, "logprobs": 0, "logit_bias": {}}
    answer = await client.post(
        "/v1/completions", json={"model": "fake-model", "prompt": "hi", "stream": False, **neutral}
    )
    assert answer.status_code == 200, answer.text


class _FullEngine(FakeEngine):
    """A fake whose queue is always full."""

    def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenChunk, None]:
        raise EngineOverloaded(retry_after_s=2)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_full_queue_is_503_with_retry_after_before_any_stream(stream: bool) -> None:
    transport = httpx.ASGITransport(app=create_app(_FullEngine()))
    async with httpx.AsyncClient(transport=transport, base_url="http://engine") as http:
        response = await http.post("/v1/chat/completions", json=_chat(stream=stream))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    assert response.json()["error"]["code"] == "engine_overloaded"
