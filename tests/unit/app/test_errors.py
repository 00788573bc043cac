"""The gateway's errors: every kind of bad input gets the OpenAI envelope with the right status,
never a 500 (through the gateway in process, over our engine server on a fake engine, which
refuses what only an engine can tell: a prompt or a completion past its context); a bug is
one 500 in the envelope and one traceback in the log; and a FastAPI route's validation error
names its param."""

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.factory import create_app
from app.settings import GatewaySettings
from engines.fake import FakeEngine
from engines.server.api import create_app as create_engine_app
from harness.inprocess import InProcessGateway, gateway_in_process, pool_settings

MODEL = "fake-model"
ENGINE = "http://engine"

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


@pytest.fixture
async def gateway() -> AsyncIterator[InProcessGateway]:
    async with gateway_in_process(pool_settings([ENGINE]), {ENGINE: create_engine_app(FakeEngine())}) as gateway:
        yield gateway


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "type_", "param", "code"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
async def test_bad_input(
    gateway: InProcessGateway,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    type_: str,
    param: str | None,
    code: str | None,
) -> None:
    response = await gateway.client.post(path, content=body, headers=headers)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["type"] == type_
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code


async def test_wrong_method_is_an_envelope(gateway: InProcessGateway) -> None:
    response = await gateway.client.get("/v1/chat/completions")
    assert response.status_code == 405
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_chunked_body_over_the_limit(gateway: InProcessGateway) -> None:
    async def body() -> AsyncIterator[bytes]:  # no Content-Length: the limit is enforced while reading
        yield b'{"x": "'
        for _ in range(5):
            yield b"a" * 1024 * 1024
        yield b'"}'

    response = await gateway.client.post("/v1/chat/completions", content=body(), headers=JSON)
    assert response.status_code == 413


async def test_no_engine_reachable_is_503() -> None:
    """A gateway whose only replica never answers."""
    async with gateway_in_process(pool_settings(["http://gone"]), {}) as gateway:
        response = await gateway.client.post("/v1/chat/completions", json=GOOD)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "engine_unavailable"
        ready = await gateway.client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["error"]["type"] == "server_error"
        assert (await gateway.client.get("/health")).status_code == 200


def _app(tmp_path: Path) -> TestClient:
    settings = GatewaySettings.model_validate(
        {
            "pools": [{"name": "p", "replicas": ["http://127.0.0.1:9"]}],
            "auth_mode": "disabled",
            "data_dir": str(tmp_path),
        }
    )
    app = create_app(settings)

    async def fake_bug() -> None:  # a fake route, for the test only: a bug in a handler
        raise KeyError("secret detail")

    async def fake_validated(count: int) -> int:  # a fake route, for the test only: a typed parameter
        return count

    app.add_api_route("/fake-bug", fake_bug)
    app.add_api_route("/fake-validated", fake_validated)
    return TestClient(app, raise_server_exceptions=False)


def test_a_bug_is_one_500_in_the_envelope_and_one_traceback(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with _app(tmp_path) as client, caplog.at_level(logging.ERROR):
        answer = client.get("/fake-bug")
    assert answer.status_code == 500
    assert answer.json() == {
        "error": {"message": "The gateway had an internal error.", "type": "server_error", "param": None, "code": None}
    }
    assert "secret detail" not in answer.text
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1, caplog.records
    assert "/fake-bug" in tracebacks[0].getMessage()


def test_a_routes_validation_error_names_its_param(tmp_path: Path) -> None:
    with _app(tmp_path) as client:
        answer = client.get("/fake-validated", params={"count": "many"})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "count")
    assert error["message"].startswith("Invalid value for 'count'")
