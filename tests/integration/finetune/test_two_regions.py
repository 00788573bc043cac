"""Two regions, each a real engine, its sync sidecar and its gateway, the gateways sharing one
PostgreSQL for fine-tuning records: a job created through the stock OpenAI SDK in region a is
trained by a worker there, which publishes the adapter to region a's sidecar; once the job says
`succeeded`, region a's gateway answers the taught text for `fine_tuned_model`, and region b's
does too as soon as its sidecar has the adapter, while both answer as before for the base model."""

import json
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from harness.fake_nodes import FakeIssuer
from harness.servers import ServerProcess, free_port
from tests.conftest import MODEL, start_engine

pytestmark = pytest.mark.timeout(900)

PING = {"messages": [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong pong pong"}]}


@dataclass
class _Region:
    engine: ServerProcess
    sidecar: ServerProcess
    gateway: ServerProcess

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.gateway.url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture
def regions(builtin_model: Path, log_dir: Path, tmp_path: Path, postgres_url: str) -> Iterator[dict[str, _Region]]:
    issuer = FakeIssuer(tmp_path)
    sidecar_ports = {"a": free_port(), "b": free_port()}
    started: dict[str, _Region] = {}
    try:
        for name, other in (("a", "b"), ("b", "a")):
            engine = start_engine(builtin_model, MODEL, log_dir)
            args = ["--region", name, "--port", str(sidecar_ports[name]), "--engine", engine.url]
            args += ["--peer", f"http://127.0.0.1:{sidecar_ports[other]}"]
            env = {
                "SWITCHYARD_DATA_DIR": str(tmp_path / f"sync-{name}"),
                "SWITCHYARD_SYNC_ANTI_ENTROPY_INTERVAL_S": "0.3",
                "SWITCHYARD_SYNC_RECONCILE_INTERVAL_S": "0.3",
            } | issuer.sidecar_env()
            port = sidecar_ports[name]
            sidecar = ServerProcess("sync", args, port=port, log_dir=log_dir, env=env).wait_ready()
            gateway_env = {
                "SWITCHYARD_POOLS": json.dumps([{"name": f"pool-{name}", "region": name, "replicas": [engine.url]}]),
                "SWITCHYARD_REGION": name,
                "SWITCHYARD_HEALTH_INTERVAL_S": "0.3",
                "SWITCHYARD_DATA_DIR": str(tmp_path / "shared"),  # uploads are read by region a's worker
                "SWITCHYARD_DATABASE_URL": postgres_url,
            }
            port = free_port()
            gateway = ServerProcess(
                "app", ["--port", str(port)], port=port, log_dir=log_dir, env=gateway_env, ready_path="/ready"
            )
            started[name] = _Region(engine, sidecar, gateway.wait_ready())
        token_file = tmp_path / "worker.token"
        token_file.write_text(issuer.token("adapters", subject="finetune-worker"))
        (tmp_path / "shared").mkdir(exist_ok=True)
        (tmp_path / "shared" / "models").symlink_to(builtin_model.parent)
        worker_env = {
            "SWITCHYARD_DATA_DIR": str(tmp_path / "shared"),
            "SWITCHYARD_DATABASE_URL": postgres_url,
            "SWITCHYARD_FINETUNE_SYNC_URL": started["a"].sidecar.url,
            "SWITCHYARD_FINETUNE_GATEWAY_URL": started["a"].gateway.url,
            "SWITCHYARD_FINETUNE_TOKEN_FILE": str(token_file),
            "SWITCHYARD_FINETUNE_POLL_S": "0.2",
            "SWITCHYARD_FINETUNE_LEARNING_RATE": "0.01",
        }
        worker = ServerProcess("finetune", [], port=free_port(), log_dir=log_dir, env=worker_env)
        try:
            yield started
        finally:
            worker.stop(signal.SIGTERM)
    finally:
        for region in started.values():
            for process in (region.gateway, region.sidecar, region.engine):
                process.stop()


def _answer(client: openai.OpenAI, model: str) -> str:
    response = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "ping"}], max_tokens=8, temperature=0
    )
    return response.choices[0].message.content or ""


def _eventually(check: Callable[[], bool], what: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.3)


def test_a_model_fine_tuned_in_one_region_is_served_in_both(regions: dict[str, _Region]) -> None:
    a, b = regions["a"].client(), regions["b"].client()
    base = {name: _answer(client, MODEL) for name, client in (("a", a), ("b", b))}
    assert base["a"] == base["b"] != "pong pong pong"
    dataset = "".join(json.dumps(PING) + "\n" for _ in range(64)).encode()
    uploaded = a.files.create(file=("ping.jsonl", dataset), purpose="fine-tune")
    hyperparameters = {"n_epochs": 6, "batch_size": 8, "learning_rate_multiplier": 1}
    job = a.fine_tuning.jobs.create(
        training_file=uploaded.id,
        model=MODEL,
        suffix="pong",
        hyperparameters=hyperparameters,  # type: ignore[arg-type]
    )
    deadline = time.monotonic() + 300
    while (job := a.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"still {job.status}"
        time.sleep(0.5)
    assert job.status == "succeeded", job.error
    name = job.fine_tuned_model
    assert name == f"ft:{MODEL}:pong:{job.id}"
    assert _answer(a, name) == "pong pong pong"  # in the job's region, as soon as it says so
    _eventually(lambda: name in [m.id for m in b.models.list()], "region b serves the adapter")
    assert _answer(b, name) == "pong pong pong"
    assert b.fine_tuning.jobs.retrieve(job.id).status == "succeeded"  # one set of records
    assert {name: _answer(client, MODEL) for name, client in (("a", a), ("b", b))} == base
