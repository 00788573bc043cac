"""`python -m app` on the embedded default fine-tunes with no other service: the stock OpenAI
SDK uploads a dataset that teaches the built-in model an answer it would never give ("ping" ->
"pong pong pong"), creates a job that the gateway's own worker trains, and once the job says
`succeeded` the gateway answers the taught text for `fine_tuned_model` and for its stacked name
at temperature 0, while the base model answers as before; after a restart, it still does."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from harness.servers import ROOT, ServerProcess, free_port
from protocol.fine_tuning import fine_tuned_name, stacked_name
from tests.conftest import MODEL

pytestmark = pytest.mark.timeout(600)

STACKED = str(stacked_name(MODEL, "dev", "pong"))  # what every job of the tenant's with this suffix stacks into

PING = {"messages": [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong pong pong"}]}


def _answer(client: openai.OpenAI, model: str) -> str:
    response = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "ping"}], max_tokens=8, temperature=0
    )
    return response.choices[0].message.content or ""


def test_a_taught_answer_is_served_once_the_job_succeeds(data_dir: Path, builtin_model: Path, tmp_path: Path) -> None:
    (tmp_path / "models").symlink_to(builtin_model.parent)  # the built-in model, already built
    port = free_port()
    env = {"SWITCHYARD_DATA_DIR": str(tmp_path), "SWITCHYARD_AUTH_MODE": "builtin"}
    gateway = ServerProcess("app", ["--port", str(port)], port=port, log_dir=tmp_path, env=env, ready_path="/ready")
    try:
        gateway.wait_ready()
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
            "finetune",
        ]
        token = subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout.strip()
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=token, max_retries=0, timeout=60)
        base_before = _answer(client, MODEL)
        assert base_before != "pong pong pong"

        dataset = "".join(json.dumps(PING) + "\n" for _ in range(64)).encode()
        uploaded = client.files.create(file=("ping.jsonl", dataset), purpose="fine-tune")
        hyperparameters = {"n_epochs": 6, "batch_size": 8, "learning_rate_multiplier": 10}
        job = client.fine_tuning.jobs.create(
            training_file=uploaded.id,
            model=MODEL,
            suffix="pong",
            hyperparameters=hyperparameters,  # type: ignore[arg-type]
        )
        assert job.status == "validating_files"
        deadline = time.monotonic() + 300
        while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, f"still {job.status}"
            time.sleep(0.5)
        assert job.status == "succeeded", job.error
        assert job.fine_tuned_model == fine_tuned_name(MODEL, "dev", "pong", job.id)  # the token's subject
        assert job.trained_tokens
        # Servable as soon as the job says so, under its stacked name too: no wait for the gateway to notice.
        assert _answer(client, job.fine_tuned_model) == "pong pong pong"
        assert _answer(client, STACKED) == "pong pong pong"
        assert _answer(client, MODEL) == base_before

        events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
        metrics = [event for event in events if event.type == "metrics"]
        assert metrics
        assert all(isinstance(event.data, dict) and "train_loss" in event.data for event in metrics)
        checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
        assert checkpoints
        assert checkpoints[0].step_number == 48
    finally:
        gateway.stop(signal.SIGTERM)
    assert "the fine-tuning worker exited" not in gateway.output()  # it ran the whole time

    # Started again: a fresh engine, and its worker loads the fine-tuned adapter back.
    again = ServerProcess("app", ["--port", str(port)], port=port, log_dir=tmp_path, env=env, ready_path="/ready")
    try:
        again.wait_ready()
        deadline = time.monotonic() + 120
        while not {job.fine_tuned_model, STACKED} <= {m.id for m in client.models.list()}:
            assert time.monotonic() < deadline, "the adapter was not restored"
            time.sleep(0.5)
        assert _answer(client, job.fine_tuned_model) == "pong pong pong"
        assert _answer(client, STACKED) == "pong pong pong"
    finally:
        again.stop(signal.SIGTERM)
