"""The engines' API key: every route but `/health` and `/metrics` needs it, and a refusal is a 401 envelope.

In process over the fake engine for the routes, then a real engine process that takes
its key from SWITCHYARD_ENGINE_API_KEY, and the vLLM launcher handing its key to vLLM.
"""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from engines.fake import FakeEngine
from engines.server.api import create_app
from engines.transformers.__main__ import parse_args
from engines.vllm.__main__ import parse_args as parse_vllm_args
from engines.vllm.__main__ import vllm_command, vllm_environment
from tests.conftest import MODEL
from tests.servers import ServerProcess, free_port

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
    env = {"SWITCHYARD_ENGINE_API_KEY": "real-engine-key"}
    server = ServerProcess("engines.transformers", args, port=port, log_dir=log_dir, env=env).wait_ready()
    yield server
    server.stop()


def test_a_real_engine_takes_its_key_from_the_environment(keyed_engine: ServerProcess) -> None:
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 2, "stream": True}
    with httpx.Client(base_url=keyed_engine.url, timeout=30) as http:
        _assert_refused(http.post("/v1/completions", json=body))
        _assert_refused(http.post("/v1/completions", json=body, headers={"authorization": "Bearer real-engine-ke"}))
        lora = {"lora_name": "x", "lora_path": "/nowhere"}
        _assert_refused(http.post("/v1/load_lora_adapter", json=lora))
        answer = http.post("/v1/completions", json=body, headers={"authorization": "Bearer real-engine-key"})
        assert answer.status_code == 200
        assert answer.text.rstrip().endswith("data: [DONE]")
        assert http.get("/health").status_code == 200
        assert "vllm:num_requests_running" in http.get("/metrics").text
    assert "real-engine-key" not in keyed_engine.output()


def test_the_flag_sets_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWITCHYARD_ENGINE_API_KEY", raising=False)
    settings = parse_args(["--api-key", "from-flag"])
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == "from-flag"
    assert "from-flag" not in repr(settings), "the key never shows in a settings dump"
    assert parse_args([]).api_key is None


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["--api-key", "k1"], {}, "k1"),
        ([], {"SWITCHYARD_VLLM_API_KEY": "k2"}, "k2"),
        ([], {"SWITCHYARD_ENGINE_API_KEY": "k3"}, "k3"),
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
