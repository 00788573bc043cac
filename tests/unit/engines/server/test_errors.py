"""The engine server tells request errors (4xx) from engine faults (5xx), in the envelope,
and logs what it did not expect. What the framework refuses (an unknown path, a method, a
body that is not JSON or has the wrong types, a parameter a route declares) is in the
envelope too, never FastAPI's `{"detail": ...}`; a ValueError a bug raises is a 500, never a 400."""

import json
from collections.abc import AsyncGenerator, Callable
from typing import NoReturn

import httpx
import pytest

from engines.base import EngineFault, GenerationRequest, InvalidRequest, SequenceFault, TokenChunk
from engines.fake import FakeEngine
from engines.server import body
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


def _envelope(answer: httpx.Response, status: int) -> dict[str, str | None]:
    """The error of an answer that must be `status` in the OpenAI envelope, never FastAPI's `detail`."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert set(body) == {"error"}, body
    error: dict[str, str | None] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["message"]
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
    return error


@pytest.mark.parametrize("path", ["/nowhere", "/v1", "/v1/chat", "/v1/models/fake-model", "/docs", "/openapi.json/x"])
async def test_an_unknown_path_is_a_404_in_the_envelope(path: str) -> None:
    async with _client(FakeEngine()) as http:
        _envelope(await http.get(path), 404)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/chat/completions"), ("PUT", "/v1/completions"), ("POST", "/health"), ("DELETE", "/metrics"),
     ("POST", "/v1/models"), ("GET", "/v1/load_lora_adapter"), ("PATCH", "/v1/unload_lora_adapter")],
)  # fmt: skip
async def test_a_method_a_route_does_not_take_is_a_405_in_the_envelope(method: str, path: str) -> None:
    async with _client(FakeEngine()) as http:
        answer = await http.request(method, path)
    _envelope(answer, 405)
    assert answer.headers["allow"]


@pytest.mark.parametrize("body", [b"{", b"\xff", b"", b"NaN", b"[" * 5_000 + b"]" * 5_000, b"[]", b"null"])
@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/completions", "/v1/load_lora_adapter", "/v1/unload_lora_adapter"]
)
async def test_a_body_that_is_not_a_json_object_is_a_400_in_the_envelope(path: str, body: bytes) -> None:
    async with _client(FakeEngine()) as http:
        _envelope(await http.post(path, content=body, headers={"content-type": "application/json"}), 400)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"model": "fake-model", "messages": "hi"}, "messages"),
        ("/v1/chat/completions", {"model": 5, "messages": [{"role": "user", "content": "hi"}]}, "model"),
        ("/v1/completions", {"model": "fake-model", "prompt": "hi", "max_tokens": "many"}, "max_tokens"),
        ("/v1/completions", {"model": "fake-model", "prompt": "hi", "temperature": [1]}, "temperature"),
        ("/v1/load_lora_adapter", {"lora_name": ["a"], "lora_path": "/a"}, "lora_name"),
        ("/v1/unload_lora_adapter", {"lora_name": 7}, "lora_name"),
    ],
)
async def test_wrong_types_are_a_400_naming_the_field(path: str, body: dict[str, object], param: str) -> None:
    async with _client(FakeEngine()) as http:
        assert _envelope(await http.post(path, json=body), 400)["param"] == param


async def test_a_parameter_a_route_declares_is_a_400_in_the_envelope() -> None:
    app = create_app(FakeEngine())

    @app.get("/fake-typed")
    async def fake_typed(count: int) -> dict[str, int]:  # no route declares one yet; a later one may
        return {"count": count}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://engine") as http:
        assert _envelope(await http.get("/fake-typed", params={"count": "many"}), 400)["param"] == "count"
        assert _envelope(await http.get("/fake-typed"), 400)["param"] == "count"


def _bug(*args: object, **kwargs: object) -> NoReturn:
    raise ValueError("secret internal detail")


async def _async_bug(*args: object, **kwargs: object) -> NoReturn:
    raise ValueError("secret internal detail")


class _BrokenAdapters(dict[str, str]):
    def items(self) -> NoReturn:
        raise ValueError("secret internal detail")


CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}

# Each: what to break (the engine -> (object, attribute, replacement)), and the request that meets it.
BUGS: dict[str, tuple[Callable[[FakeEngine], tuple[object, str, object]], str, str, object]] = {
    "encoding a chat": (lambda e: (e, "encode_chat", _bug), "POST", "/v1/chat/completions", CHAT),
    "encoding a prompt": (lambda e: (e, "encode", _bug), "POST", "/v1/completions", _body(False)),
    "streaming": (lambda e: (e, "encode", _bug), "POST", "/v1/completions", _body(True)),
    "describing a refusal": (lambda e: (body, "describe_validation_error", _bug), "POST", "/v1/completions", {}),
    "listing models": (lambda e: (e, "adapters", _BrokenAdapters()), "GET", "/v1/models", None),
    "loading an adapter": (
        lambda e: (e, "load_adapter", _async_bug),
        "POST",
        "/v1/load_lora_adapter",
        {"lora_name": "a", "lora_path": "/a"},
    ),
    "unloading an adapter": (
        lambda e: (e, "unload_adapter", _async_bug),
        "POST",
        "/v1/unload_lora_adapter",
        {"lora_name": "a"},
    ),
}


@pytest.mark.parametrize("where", sorted(BUGS))
async def test_a_value_error_from_a_bug_is_a_500_never_a_400(
    where: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    engine = FakeEngine()
    target, method, path, request = BUGS[where]
    monkeypatch.setattr(*target(engine))
    async with _client(engine) as http:
        answer = await http.request(method, path, json=request)
    assert _envelope(answer, 500) == {
        "message": "internal engine error: ValueError",
        "type": "server_error",
        "param": None,
        "code": "engine_error",
    }
    assert "secret" not in answer.text
    logged = [r for r in caplog.records if r.exc_info]
    assert len(logged) == 1
    assert path in logged[0].getMessage()
