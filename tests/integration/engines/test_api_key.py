"""The engines' API key in real processes: an engine takes its key from SWITCHYARD_ENGINE_API_KEY
and never logs it, and either engine started with an empty key exits 2 and says why."""

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.servers import ServerProcess, free_port
from tests.conftest import MODEL
from tests.unit.engines.server.test_auth import assert_refused


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
        assert_refused(http.post("/v1/completions", json=body))
        assert_refused(http.post("/v1/completions", json=body, headers={"authorization": "Bearer real-engine-key-012"}))
        lora = {"lora_name": "x", "lora_path": "/nowhere"}
        assert_refused(http.post("/v1/load_lora_adapter", json=lora))
        answer = http.post("/v1/completions", json=body, headers={"authorization": "Bearer real-engine-key-0123"})
        assert answer.status_code == 200
        assert answer.text.rstrip().endswith("data: [DONE]")
        assert http.get("/health").status_code == 200
        assert "vllm:num_requests_running" in http.get("/metrics").text
    assert "real-engine-key-0123" not in keyed_engine.output()


@pytest.mark.parametrize("module", ["engines.transformers", "engines.vllm"])
def test_an_engine_started_with_an_empty_key_exits_2_and_says_why(module: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "SWITCHYARD_ENGINE_API_KEY": "", "HOME": "/nonexistent"}
    done = subprocess.run(
        [sys.executable, "-m", module], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 2, done.stderr
    assert "an empty one would leave the engine open" in done.stderr
