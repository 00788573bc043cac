"""The engine server tells request errors (4xx) from engine faults (5xx), in the envelope,
and logs what it did not expect."""

import json
from collections.abc import AsyncGenerator

import httpx
import pytest

from engines.base import EngineFault, GenerationRequest, InvalidRequest, SequenceFault, TokenChunk
from engines.fake import FakeEngine
from engines.server.api import create_app


class _FailingEngine(FakeEngine):
    """A fake whose generation yields two tokens, then raises the exception it was given."""

    def __init__(self, error: Exception) -> None:
        super().__init__(max_model_len=64)
        self.error = error

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenChunk, None]:
        yield TokenChunk(list(b"ok"))
        raise self.error


class _BuggyEngine(FakeEngine):
    """A fake with a bug before any generation: not an engine error at all."""

    def encode(self, text: str) -> list[int]:
        raise KeyError("secret internal detail")


def _client(engine: FakeEngine) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(engine)), base_url="http://engine")


def _body(stream: bool, **fields: object) -> dict[str, object]:
    return {"model": "fake-model", "prompt": "hi", "stream": stream, **fields}


@pytest.mark.parametrize(
    ("error", "status", "type_", "param", "code"),
    [
        (InvalidRequest("bad mid-way", "prompt"), 400, "invalid_request_error", "prompt", None),
        (EngineFault("the model failed"), 500, "server_error", None, "engine_error"),
        (SequenceFault("this request's prefill failed"), 500, "server_error", None, "sequence_failed"),
        (RuntimeError("a bug"), 500, "server_error", None, "engine_error"),
    ],
)
async def test_a_failure_during_generation(
    error: Exception, status: int, type_: str, param: str | None, code: str | None
) -> None:
    async with _client(_FailingEngine(error)) as http:
        whole = await http.post("/v1/completions", json=_body(False))
        stream = await http.post("/v1/completions", json=_body(True))
    assert whole.status_code == status
    assert whole.json()["error"] | {"message": ""} == {"message": "", "type": type_, "param": param, "code": code}
    # Once a stream has started, the failure is one error event for that stream, and no [DONE].
    assert stream.status_code == 200
    events = [e.removeprefix("data: ") for e in stream.text.split("\n\n") if e]
    assert events[-1] != "[DONE]"
    assert json.loads(events[-1])["error"]["type"] == type_
    assert json.loads(events[0])["choices"][0]["text"] == "ok"


async def test_an_unexpected_error_is_logged_once_and_answered_without_its_details(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with _client(_BuggyEngine()) as http:
        answer = await http.post("/v1/completions", json=_body(False))
    assert answer.status_code == 500
    assert answer.json()["error"] == {
        "message": "internal engine error: KeyError",
        "type": "server_error",
        "param": None,
        "code": "engine_error",
    }
    logged = [r for r in caplog.records if r.exc_info]
    assert len(logged) == 1
    assert "POST /v1/completions" in logged[0].getMessage()


@pytest.mark.parametrize(
    ("prompt", "message"),
    [([72, 256], "Token id 256 is out of vocabulary"), ([[1, 2, 300]], "Token id 300")],
)
async def test_prompt_ids_outside_the_vocabulary_are_refused(prompt: object, message: str) -> None:
    fake = FakeEngine()
    async with _client(fake) as http:
        answer = await http.post("/v1/completions", json={"model": "fake-model", "prompt": prompt})
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "prompt"
    assert answer.json()["error"]["message"].startswith(message)
    assert fake.requests == [], "refused before reaching the engine"


@pytest.mark.parametrize(
    ("fields", "param"),
    [({"best_of": 2}, "best_of"), ({"logprobs": 1}, "logprobs"), ({"logit_bias": {"5": 1}}, "logit_bias")],
)
async def test_fields_this_engine_does_not_implement_are_refused(fields: dict[str, object], param: str) -> None:
    async with _client(FakeEngine()) as http:
        answer = await http.post("/v1/completions", json=_body(False, **fields))
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == param


async def test_neutral_values_of_unimplemented_fields_are_accepted() -> None:
    neutral = {"best_of": 1, "logprobs": 0, "logit_bias": {}}
    async with _client(FakeEngine()) as http:
        answer = await http.post("/v1/completions", json=_body(False, **neutral))
    assert answer.status_code == 200, answer.text
