"""A region's sync sidecar away when a job's adapter is ready to publish: a real engine and
gateway, a worker whose sidecar is not up yet. The job waits in its publishing, trying again,
and once the sidecar starts it succeeds and its model is served; nothing trained is lost."""

import json
import signal
import time
from pathlib import Path

import openai
import pytest

from harness.fake_nodes import FakeIssuer
from harness.servers import ServerProcess, free_port
from tests.conftest import MODEL, start_engine

pytestmark = pytest.mark.timeout(600)

PING = {"messages": [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong pong pong"}]}


def test_a_job_waits_out_its_sidecars_absence_and_then_succeeds(
    builtin_model: Path, log_dir: Path, tmp_path: Path, postgres_url: str
) -> None:
    issuer = FakeIssuer(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "models").symlink_to(builtin_model.parent)
    token_file = tmp_path / "worker.token"
    token_file.write_text(issuer.token("adapters", subject="finetune-worker"))
    engine = start_engine(builtin_model, MODEL, log_dir)
    processes = [engine]
    try:
        gateway_port, sidecar_port = free_port(), free_port()
        gateway_env = {
            "SWITCHYARD_POOLS": json.dumps([{"name": "pool", "region": "a", "replicas": [engine.url]}]),
            "SWITCHYARD_REGION": "a",
            "SWITCHYARD_HEALTH_INTERVAL_S": "0.3",
            "SWITCHYARD_DATA_DIR": str(tmp_path / "data"),
            "SWITCHYARD_DATABASE_URL": postgres_url,
        }
        gateway = ServerProcess(
            "app",
            ["--port", str(gateway_port)],
            port=gateway_port,
            log_dir=log_dir,
            env=gateway_env,
            ready_path="/ready",
        ).wait_ready()
        processes.append(gateway)
        worker_env = {
            "SWITCHYARD_DATA_DIR": str(tmp_path / "data"),
            "SWITCHYARD_DATABASE_URL": postgres_url,
            "SWITCHYARD_FINETUNE_SYNC_URL": f"http://127.0.0.1:{sidecar_port}",  # nothing listens there yet
            "SWITCHYARD_FINETUNE_GATEWAY_URL": gateway.url,
            "SWITCHYARD_FINETUNE_TOKEN_FILE": str(token_file),
            "SWITCHYARD_FINETUNE_POLL_S": "0.2",
        }
        worker = ServerProcess("finetune", [], port=free_port(), log_dir=log_dir, env=worker_env)
        processes.append(worker)
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0, timeout=60)
        dataset = "".join(json.dumps(PING) + "\n" for _ in range(16)).encode()
        uploaded = client.files.create(file=("ping.jsonl", dataset), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            training_file=uploaded.id, model=MODEL, suffix="pong", hyperparameters={"n_epochs": 1, "batch_size": 8}
        )
        deadline = time.monotonic() + 300
        while "could not be reached" not in worker.output():  # a first try at the absent sidecar
            assert time.monotonic() < deadline, worker.output()
            assert client.fine_tuning.jobs.retrieve(job.id).status in ("validating_files", "queued", "running")
            time.sleep(0.3)
        time.sleep(1)
        assert client.fine_tuning.jobs.retrieve(job.id).status == "running"  # waiting, not failed
        env = {"SWITCHYARD_DATA_DIR": str(tmp_path / "sync")} | issuer.sidecar_env()
        args = ["--region", "a", "--port", str(sidecar_port), "--engine", engine.url]
        sidecar = ServerProcess("sync", args, port=sidecar_port, log_dir=log_dir, env=env).wait_ready()
        processes.append(sidecar)
        while (job := client.fine_tuning.jobs.retrieve(job.id)).status == "running":
            assert time.monotonic() < deadline, worker.output()
            time.sleep(0.5)
        assert job.status == "succeeded", job.error
        assert job.fine_tuned_model is not None
        answer = client.chat.completions.create(
            model=job.fine_tuned_model, messages=[{"role": "user", "content": "ping"}], max_tokens=4
        )
        assert answer.choices[0].message.content is not None
    finally:
        for process in reversed(processes):
            process.stop(signal.SIGTERM)
