"""The engines' API key: every route but `/health` and `/metrics` needs it, and a refusal is a 401 envelope.

In process over the fake engine for the routes, then a real engine process that takes
its key from SWITCHYARD_ENGINE_API_KEY, and the vLLM launcher handing its key (and our
guard, for the routes vLLM's own check leaves open) to vLLM. An empty or short key is
refused at start: it once left the engine open without a word.
"""

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

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
from engines.vllm.__main__ import GUARD, vllm_command, vllm_environment
from engines.vllm.__main__ import parse_args as parse_vllm_args
from harness.servers import ServerProcess, free_port
from tests.conftest import MODEL

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
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(FakeEngine(), api_key=KEY)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://engine") as http:
        yield http


def _assert_refused(answer: httpx.Response) -> None:
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
    client: httpx.AsyncClient, method: str, path: str, body: object, headers: list[tuple[str, str]]
) -> None:
    raw = [(name.encode(), value.encode("latin-1")) for name, value in headers]
    _assert_refused(await client.request(method, path, json=body, headers=raw))


async def test_the_right_key_works_everywhere(client: httpx.AsyncClient) -> None:
    chat = await client.post("/v1/chat/completions", json=CHAT, headers=RIGHT)
    assert chat.status_code == 200
    assert (await client.get("/v1/models", headers={"authorization": f"bearer {KEY}"})).status_code == 200
    loaded = await client.post("/v1/load_lora_adapter", json={"lora_name": "a", "lora_path": "/x"}, headers=RIGHT)
    assert loaded.status_code == 200
    assert [m["id"] for m in (await client.get("/v1/models", headers=RIGHT)).json()["data"]] == ["fake-model", "a"]
    assert (await client.get("/v1/no-such-route", headers=RIGHT)).status_code == 404


async def test_probes_stay_open(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).status_code == 200
    assert "vllm:num_requests_running" in (await client.get("/metrics")).text


async def test_no_key_means_open() -> None:
    app = create_app(FakeEngine())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://engine") as http:
        assert (await http.post("/v1/chat/completions", json=CHAT)).status_code == 200


@pytest.fixture(scope="module")
def keyed_engine(builtin_model: Path, log_dir: Path) -> Iterator[ServerProcess]:
    """A real engine process whose key comes from the environment."""
    port = free_port()
    args = ["--model", str(builtin_model), "--served-model-name", MODEL, "--port", str(port)]
    env = {"SWITCHYARD_ENGINE_API_KEY": "real-engine-key-0123"}
    server = ServerProcess("engines.transformers", args, port=port, log_dir=log_dir, env=env).wait_ready()
    yield server
    server.stop()


def test_a_real_engine_takes_its_key_from_the_environment(keyed_engine: ServerProcess) -> None:
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 2, "stream": True}
    with httpx.Client(base_url=keyed_engine.url, timeout=30) as http:
        _assert_refused(http.post("/v1/completions", json=body))
        _assert_refused(
            http.post("/v1/completions", json=body, headers={"authorization": "Bearer real-engine-key-012"})
        )
        lora = {"lora_name": "x", "lora_path": "/nowhere"}
        _assert_refused(http.post("/v1/load_lora_adapter", json=lora))
        answer = http.post("/v1/completions", json=body, headers={"authorization": "Bearer real-engine-key-0123"})
        assert answer.status_code == 200
        assert answer.text.rstrip().endswith("data: [DONE]")
        assert http.get("/health").status_code == 200
        assert "vllm:num_requests_running" in http.get("/metrics").text
    assert "real-engine-key-0123" not in keyed_engine.output()


def test_the_flag_sets_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWITCHYARD_ENGINE_API_KEY", raising=False)
    settings = parse_args(["--api-key", "from-the-flag-0123"])
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == "from-the-flag-0123"
    assert "from-the-flag-0123" not in repr(settings), "the key never shows in a settings dump"
    assert parse_args([]).api_key is None


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["--api-key", "key-one-0123456789"], {}, "key-one-0123456789"),
        ([], {"SWITCHYARD_VLLM_API_KEY": "key-two-0123456789"}, "key-two-0123456789"),
        ([], {"SWITCHYARD_ENGINE_API_KEY": "key-three-01234567"}, "key-three-01234567"),
        ([], {"VLLM_API_KEY": "vllms-own-0123456789"}, "vllms-own-0123456789"),  # never leaves routes open
        ([], {}, None),
    ],
)
def test_the_vllm_launcher_hands_its_key_to_vllm_off_the_command_line(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], env: dict[str, str], expected: str | None
) -> None:
    for name in ("SWITCHYARD_VLLM_API_KEY", "SWITCHYARD_ENGINE_API_KEY", "VLLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings, extra = parse_vllm_args(argv)
    assert vllm_environment(settings).get("VLLM_API_KEY") == expected
    # vLLM reads VLLM_API_KEY as its --api-key; on the command line the key would show in `ps`.
    command = vllm_command(settings, "/model", "m", extra)
    assert not any(expected and expected in part for part in command)
    if expected is None:
        assert "--middleware" not in command
        return
    # With a key, our guard goes in too: vLLM's own guards /v1 and a few prefixes only.
    assert command[command.index("--middleware") + 1] == GUARD == "engines.vllm.guard.VllmApiKeyGuard"
    repo = str(Path(__file__).resolve().parents[1])
    assert vllm_environment(settings)["PYTHONPATH"].split(os.pathsep)[0] == repo  # importable from anywhere


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


@pytest.mark.parametrize("module", ["engines.transformers", "engines.vllm"])
def test_an_engine_started_with_an_empty_key_exits_2_and_says_why(module: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "SWITCHYARD_ENGINE_API_KEY": "", "HOME": "/nonexistent"}
    done = subprocess.run(
        [sys.executable, "-m", module], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 2, done.stderr
    assert "an empty one would leave the engine open" in done.stderr


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
