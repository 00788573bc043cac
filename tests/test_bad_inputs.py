"""Every kind of bad input gets the OpenAI envelope with the right status, never a 500."""

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.servers import ServerProcess, free_port
from tests.conftest import MODEL

GOOD = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
JSON = {"content-type": "application/json"}


def _with(**changes: object) -> bytes:
    body = {**GOOD, **changes}
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


CASES = [
    # (name, path, body, headers, status, type, param, code)
    ("malformed json", "/v1/chat/completions", b'{"model": ', JSON, 400, "invalid_request_error", None, None),
    ("not an object", "/v1/chat/completions", b"[1, 2]", JSON, 400, "invalid_request_error", None, None),
    (
        "missing messages",
        "/v1/chat/completions",
        _with(messages=...),
        JSON,
        400,
        "invalid_request_error",
        "messages",
        None,
    ),
    (
        "empty messages",
        "/v1/chat/completions",
        _with(messages=[]),
        JSON,
        400,
        "invalid_request_error",
        "messages",
        None,
    ),
    (
        "messages not a list",
        "/v1/chat/completions",
        _with(messages="hi"),
        JSON,
        400,
        "invalid_request_error",
        "messages",
        None,
    ),
    (
        "message without role",
        "/v1/chat/completions",
        _with(messages=[{"content": "x"}]),
        JSON,
        400,
        "invalid_request_error",
        "messages[0].role",
        None,
    ),
    (
        "content of wrong type",
        "/v1/chat/completions",
        _with(messages=[{"role": "user", "content": 5}]),
        JSON,
        400,
        "invalid_request_error",
        "messages[0].content",
        None,
    ),
    ("missing model", "/v1/chat/completions", _with(model=...), JSON, 400, "invalid_request_error", "model", None),
    ("model not a string", "/v1/chat/completions", _with(model=5), JSON, 400, "invalid_request_error", "model", None),
    (
        "temperature above 2",
        "/v1/chat/completions",
        _with(temperature=2.01),
        JSON,
        400,
        "invalid_request_error",
        "temperature",
        None,
    ),
    (
        "temperature below 0",
        "/v1/chat/completions",
        _with(temperature=-1),
        JSON,
        400,
        "invalid_request_error",
        "temperature",
        None,
    ),
    (
        "temperature a string",
        "/v1/chat/completions",
        _with(temperature="0.5"),
        JSON,
        400,
        "invalid_request_error",
        "temperature",
        None,
    ),
    (
        "max_tokens 0",
        "/v1/chat/completions",
        _with(max_tokens=0),
        JSON,
        400,
        "invalid_request_error",
        "max_tokens",
        None,
    ),
    (
        "max_tokens a float",
        "/v1/chat/completions",
        _with(max_tokens=1.5),
        JSON,
        400,
        "invalid_request_error",
        "max_tokens",
        None,
    ),
    (
        "max_completion_tokens 0",
        "/v1/chat/completions",
        _with(max_completion_tokens=0),
        JSON,
        400,
        "invalid_request_error",
        "max_completion_tokens",
        None,
    ),
    ("n 3", "/v1/chat/completions", _with(n=3), JSON, 400, "invalid_request_error", "n", None),
    (
        "five stops",
        "/v1/chat/completions",
        _with(stop=["a", "b", "c", "d", "e"]),
        JSON,
        400,
        "invalid_request_error",
        "stop",
        None,
    ),
    ("stop of wrong type", "/v1/chat/completions", _with(stop=5), JSON, 400, "invalid_request_error", "stop", None),
    (
        "stream not a bool",
        "/v1/chat/completions",
        _with(stream="yes"),
        JSON,
        400,
        "invalid_request_error",
        "stream",
        None,
    ),
    ("seed a string", "/v1/chat/completions", _with(seed="1"), JSON, 400, "invalid_request_error", "seed", None),
    (
        "unknown model",
        "/v1/chat/completions",
        _with(model="nope"),
        JSON,
        404,
        "invalid_request_error",
        "model",
        "model_not_found",
    ),
    (
        "wrong content type",
        "/v1/chat/completions",
        _with(),
        {"content-type": "text/plain"},
        415,
        "invalid_request_error",
        None,
        "unsupported_media_type",
    ),
    (
        "form content type",
        "/v1/chat/completions",
        b"a=b",
        {"content-type": "application/x-www-form-urlencoded"},
        415,
        "invalid_request_error",
        None,
        "unsupported_media_type",
    ),
    (
        "body over the limit",
        "/v1/chat/completions",
        b'{"x": "' + b"a" * (4 * 1024 * 1024) + b'"}',
        JSON,
        413,
        "invalid_request_error",
        None,
        "request_too_large",
    ),
    (
        "prompt over the context",
        "/v1/chat/completions",
        _with(messages=[{"role": "user", "content": "word " * 5000}]),
        JSON,
        400,
        "invalid_request_error",
        "messages",
        None,
    ),
    (
        "max_tokens over the context",
        "/v1/chat/completions",
        _with(max_tokens=100_000),
        JSON,
        400,
        "invalid_request_error",
        "max_tokens",
        None,
    ),
    (
        "completion without prompt",
        "/v1/completions",
        json.dumps({"model": MODEL}).encode(),
        JSON,
        400,
        "invalid_request_error",
        "prompt",
        None,
    ),
    (
        "completion batch",
        "/v1/completions",
        json.dumps({"model": MODEL, "prompt": ["a", "b"]}).encode(),
        JSON,
        400,
        "invalid_request_error",
        "prompt",
        None,
    ),
    (
        "unsupported tools",
        "/v1/chat/completions",
        _with(tools=[{"type": "function"}]),
        JSON,
        400,
        "invalid_request_error",
        "tools",
        None,
    ),
    ("predict without text", "/predict", b"{}", JSON, 400, "invalid_request_error", "text", None),
    ("unknown route", "/v1/nothing", b"{}", JSON, 404, "invalid_request_error", None, None),
]


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "type_", "param", "code"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_input(
    gateway: ServerProcess,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    type_: str,
    param: str | None,
    code: str | None,
) -> None:
    response = httpx.post(gateway.url + path, content=body, headers=headers, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["type"] == type_
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code


def test_wrong_method_is_an_envelope(gateway: ServerProcess) -> None:
    response = httpx.get(gateway.url + "/v1/chat/completions")
    assert response.status_code == 405
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_chunked_body_over_the_limit(gateway: ServerProcess) -> None:
    def body() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
        yield b'{"x": "'
        for _ in range(5):
            yield b"a" * 1024 * 1024
        yield b'"}'

    response = httpx.post(gateway.url + "/v1/chat/completions", content=body(), headers=JSON, timeout=30)
    assert response.status_code == 413


@pytest.fixture(scope="module")
def orphan_gateway(log_dir: Path) -> Iterator[ServerProcess]:
    """A gateway whose only replica never answers."""
    port = free_port()
    pools = [{"name": "gone", "replicas": [f"http://127.0.0.1:{free_port()}"]}]
    server = ServerProcess(
        "app", ["--port", str(port)], port=port, log_dir=log_dir, env={"SWITCHYARD_POOLS": json.dumps(pools)}
    ).wait_ready()
    yield server
    server.stop()


def test_no_engine_reachable_is_503(orphan_gateway: ServerProcess) -> None:
    response = httpx.post(orphan_gateway.url + "/v1/chat/completions", json=GOOD)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "engine_unavailable"
    ready = httpx.get(orphan_gateway.url + "/ready")
    assert ready.status_code == 503
    assert ready.json()["error"]["type"] == "server_error"
    assert httpx.get(orphan_gateway.url + "/health").status_code == 200
