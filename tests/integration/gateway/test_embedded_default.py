"""`python -m app` with no configuration starts, serves and stops its own engine, behind
the built-in issuer: the README's token command gives what every request needs."""

import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from harness.servers import ROOT, ServerProcess, free_port
from tests.conftest import MODEL


def test_embedded_default_serves_and_cleans_up(builtin_model: Path, data_dir: Path, log_dir: Path) -> None:
    port = free_port()
    env = {"SWITCHYARD_DATA_DIR": str(data_dir), "SWITCHYARD_AUTH_MODE": "builtin"}  # the default, said aloud
    gateway = ServerProcess("app", ["--port", str(port)], port=port, log_dir=log_dir, env=env)
    try:
        gateway.wait_ready()
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 5}
        refused = httpx.post(gateway.url + "/v1/chat/completions", json=chat, timeout=30)
        assert refused.status_code == 401
        # What `make token` runs: a development token for this gateway, scopes chat and admin.
        command = [
            sys.executable,
            "-m",
            "app.auth",
            "--port",
            str(port),
            "token",
            "--scope",
            "chat",
            "--scope",
            "admin",
        ]
        token = subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout.strip()
        auth = {"authorization": f"Bearer {token}"}
        response = httpx.post(gateway.url + "/v1/chat/completions", json=chat, headers=auth, timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] <= 5
        predicted = httpx.post(
            gateway.url + "/predict", json={"text": "hello", "max_tokens": 3}, headers=auth, timeout=30
        )
        assert predicted.status_code == 200, predicted.text
        assert predicted.json()["model"] == MODEL
        [pool] = httpx.get(gateway.url + "/status", headers=auth).json()["pools"]
        assert pool["name"] == "embedded"
        engine_url = pool["replicas"][0]["url"]
        assert httpx.get(engine_url + "/health").status_code == 200
        # The gateway's own key guards it: nothing else on this host can use the engine directly.
        assert httpx.get(engine_url + "/v1/models").status_code == 401
    finally:
        code = gateway.stop(signal.SIGTERM)
    # uvicorn re-raises the signal it handled once shutdown is complete.
    assert code in (0, -signal.SIGTERM), gateway.output()
    assert "Application shutdown complete" in gateway.output()
    with pytest.raises(httpx.ConnectError):
        httpx.get(engine_url + "/health")
