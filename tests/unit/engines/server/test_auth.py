"""The engines' API key (`ApiKeyGuard`): every route but `/health` and `/metrics` needs it, a
refusal is a 401 envelope, and websockets are guarded too. An empty or short key is refused at
start, in either engine's settings: it once left the engine open without a word."""

from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from engines.fake import FakeEngine
from engines.server.api import create_app
from engines.server.auth import ApiKeyGuard
from engines.transformers.__main__ import parse_args
from engines.vllm.__main__ import parse_args as parse_vllm_args

KEY = "engine-key-3f9a1c"
RIGHT = {"authorization": f"Bearer {KEY}"}
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

GUARDED = [
    ("POST", "/v1/chat/completions", CHAT),
    ("POST", "/v1/completions", {"model": "fake-model", "prompt": "hi", "max_tokens": 2}),
    ("GET", "/v1/models", None),
    ("POST", "/v1/load_lora_adapter", {"lora_name": "a", "lora_path": "/nowhere"}),
    ("POST", "/v1/unload_lora_adapter", {"lora_name": "a"}),
    ("GET", "/v1/no-such-route", None),
    ("GET", "/openapi.json", None),
]


@pytest.fixture
async def guarded() -> AsyncIterator[httpx.AsyncClient]:
    """The fake engine's app with a key."""
    app = create_app(FakeEngine(), api_key=KEY)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://engine") as http:
        yield http


def assert_refused(answer: httpx.Response) -> None:
    """A refusal for a missing or wrong key, exactly as every engine answers it."""
    assert answer.status_code == 401, answer.text
    assert answer.json() == {
        "error": {
            "message": "Incorrect or missing API key: send `Authorization: Bearer <key>`.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    assert answer.headers["www-authenticate"] == "Bearer"


WRONG: list[list[tuple[str, str]]] = [
    [],
    [("authorization", "Bearer nope")],
    [("authorization", f"Bearer {KEY}x")],
    [("authorization", f"Bearer {KEY[:-1]}")],
    [("authorization", KEY)],
    [("authorization", f"Basic {KEY}")],
    [("authorization", "Bearer ")],
    [("authorization", f"Bearer {KEY}"), ("authorization", "Bearer nope")],  # two credentials: ambiguous
    [("authorization", f"Bearer {KEY}"), ("authorization", f"Bearer {KEY}")],
    [("x-api-key", KEY)],
    [("authorization", "Bearer \xff\xfe" + KEY)],  # not even UTF-8 (sent as latin-1 bytes)
]


@pytest.mark.parametrize(("method", "path", "body"), GUARDED)
@pytest.mark.parametrize("headers", WRONG, ids=range(len(WRONG)))
async def test_every_guarded_route_refuses_a_missing_or_wrong_key(
    guarded: httpx.AsyncClient, method: str, path: str, body: object, headers: list[tuple[str, str]]
) -> None:
    raw = [(name.encode(), value.encode("latin-1")) for name, value in headers]
    assert_refused(await guarded.request(method, path, json=body, headers=raw))


async def test_the_right_key_works_everywhere(guarded: httpx.AsyncClient) -> None:
    chat = await guarded.post("/v1/chat/completions", json=CHAT, headers=RIGHT)
    assert chat.status_code == 200
    assert (await guarded.get("/v1/models", headers={"authorization": f"bearer {KEY}"})).status_code == 200
    loaded = await guarded.post("/v1/load_lora_adapter", json={"lora_name": "a", "lora_path": "/x"}, headers=RIGHT)
    assert loaded.status_code == 200
    assert [m["id"] for m in (await guarded.get("/v1/models", headers=RIGHT)).json()["data"]] == ["fake-model", "a"]
    assert (await guarded.get("/v1/no-such-route", headers=RIGHT)).status_code == 404


async def test_probes_stay_open(guarded: httpx.AsyncClient) -> None:
    assert (await guarded.get("/health")).status_code == 200
    assert "vllm:num_requests_running" in (await guarded.get("/metrics")).text


async def test_no_key_means_open() -> None:
    app = create_app(FakeEngine())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://engine") as http:
        assert (await http.post("/v1/chat/completions", json=CHAT)).status_code == 200


SHORT_KEYS = ["", " ", "a" * 15, "short"]
ENGINE_VARIABLES = ("SWITCHYARD_VLLM_API_KEY", "SWITCHYARD_ENGINE_API_KEY", "VLLM_API_KEY")


@pytest.mark.parametrize("key", SHORT_KEYS)
def test_create_app_refuses_an_empty_or_short_key(key: str) -> None:
    with pytest.raises(ValueError, match="at least 16 characters"):
        create_app(FakeEngine(), api_key=key)


@pytest.mark.parametrize("key", SHORT_KEYS)
@pytest.mark.parametrize(
    ("launch", "variable"),
    [
        pytest.param(parse_args, None, id="engine-flag"),
        pytest.param(parse_args, "SWITCHYARD_ENGINE_API_KEY", id="engine-env"),
        pytest.param(parse_vllm_args, None, id="vllm-flag"),
        pytest.param(parse_vllm_args, "SWITCHYARD_VLLM_API_KEY", id="vllm-env"),
        pytest.param(parse_vllm_args, "SWITCHYARD_ENGINE_API_KEY", id="vllm-engine-env"),
        pytest.param(parse_vllm_args, "VLLM_API_KEY", id="vllm-own-env"),
    ],
)
def test_an_empty_or_short_key_stops_the_start_never_taken_for_no_key(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    key: str,
    launch: Callable[[list[str]], object],
    variable: str | None,
) -> None:
    for name in ENGINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    if variable is not None:
        monkeypatch.setenv(variable, key)
    with pytest.raises(SystemExit) as stopped:
        launch(["--api-key", key] if variable is None else [])
    assert stopped.value.code == 2
    said = capsys.readouterr().err.splitlines()[-1]
    assert "error: api_key: an engine API key needs at least 16 characters" in said
    assert f"{variable or '--api-key'}" in said, "it says where a key is read from"
    assert launch(["--api-key", "a" * 16]) is not None


def _websocket_app(key: str) -> TestClient:
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("in")
        await websocket.close()

    app = Starlette(routes=[WebSocketRoute("/v1/realtime", echo)])
    return TestClient(ApiKeyGuard(app, api_key=key))


def test_a_websocket_without_the_key_is_refused() -> None:
    """vLLM serves websockets (`/v1/realtime`); the guard is not for HTTP alone."""
    with _websocket_app(KEY) as client:
        for headers in ({}, {"authorization": "Bearer nope"}):
            with (
                pytest.raises(WebSocketDisconnect) as refused,
                client.websocket_connect("/v1/realtime", headers=headers),
            ):
                pass
            assert refused.value.code == 1008
        with client.websocket_connect("/v1/realtime", headers=RIGHT) as websocket:
            assert websocket.receive_text() == "in"
