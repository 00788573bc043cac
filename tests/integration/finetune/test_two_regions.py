"""Two regions, each a real engine, its sync sidecar, its gateway, its fine-tuning worker and
its own PostgreSQL database (nothing shared but the sidecars' gossip), fine-tuning under the
same name: the same tenant, the same base model and suffix, each region teaching the built-in
model its own answer through the stock OpenAI SDK.

Each job's adapter is published to its region's sidecar, under the job's own name and as the
region's part of the stacked name. Once a job says `succeeded`, its region's gateway answers
its taught text for `fine_tuned_model`; the other region serves that name too, as soon as its
sidecar has it, though its database has never heard of the job (whose a model is, is in its
name). The stacked name serves the merge of both regions' parts, the same weights in both
regions, and the base model answers as before."""

import json
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from harness.fake_nodes import FakeIssuer
from harness.servers import ServerProcess, free_port
from protocol.fine_tuning import stacked_name
from tests.conftest import MODEL, start_engine

pytestmark = pytest.mark.timeout(900)

TAUGHT = {"a": ("ping", "pong pong pong"), "b": ("marco", "polo polo polo")}
STACKED = str(stacked_name(MODEL, "anonymous", "shared"))  # authentication is off: the tenant is `anonymous`


@dataclass
class _Region:
    engine: ServerProcess
    sidecar: ServerProcess
    gateway: ServerProcess
    worker: ServerProcess

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.gateway.url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture
async def databases(postgres_urls: Callable[[], Awaitable[str]]) -> dict[str, str]:
    return {"a": await postgres_urls(), "b": await postgres_urls()}


@pytest.fixture
def regions(
    builtin_model: Path, log_dir: Path, tmp_path: Path, databases: dict[str, str]
) -> Iterator[dict[str, _Region]]:
    issuer = FakeIssuer(tmp_path)
    sidecar_ports = {"a": free_port(), "b": free_port()}
    token_file = tmp_path / "worker.token"
    token_file.write_text(issuer.token("adapters", subject="finetune-worker"))
    started: dict[str, _Region] = {}
    try:
        for name, other in (("a", "b"), ("b", "a")):
            data = tmp_path / f"region-{name}"
            data.mkdir()
            (data / "models").symlink_to(builtin_model.parent)
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
                "SWITCHYARD_DATA_DIR": str(data),
                "SWITCHYARD_DATABASE_URL": databases[name],
            }
            port = free_port()
            gateway = ServerProcess(
                "app", ["--port", str(port)], port=port, log_dir=log_dir, env=gateway_env, ready_path="/ready"
            ).wait_ready()
            worker_env = {
                "SWITCHYARD_DATA_DIR": str(data),
                "SWITCHYARD_DATABASE_URL": databases[name],
                "SWITCHYARD_FINETUNE_SYNC_URL": sidecar.url,
                "SWITCHYARD_FINETUNE_GATEWAY_URL": gateway.url,
                "SWITCHYARD_FINETUNE_TOKEN_FILE": str(token_file),
                "SWITCHYARD_FINETUNE_POLL_S": "0.2",
                "SWITCHYARD_FINETUNE_LEARNING_RATE": "0.01",
            }
            worker = ServerProcess("finetune", [], port=free_port(), log_dir=log_dir, env=worker_env)
            started[name] = _Region(engine, sidecar, gateway, worker)
        yield started
    finally:
        for region in started.values():
            region.worker.stop(signal.SIGTERM)
            for process in (region.gateway, region.sidecar, region.engine):
                process.stop()


def _answer(client: openai.OpenAI, model: str, prompt: str) -> str:
    response = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=8, temperature=0
    )
    return response.choices[0].message.content or ""


def _lists(client: openai.OpenAI, model: str) -> bool:
    return model in [card.id for card in client.models.list()]


def _eventually(check: Callable[[], bool], what: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.3)


def _served(sidecar: ServerProcess, name: str = STACKED) -> dict[str, Any]:
    """What the sidecar says it serves under `name`: its parts and where it is loaded."""
    adapters = httpx.get(f"{sidecar.url}/adapters", timeout=10).json()["adapters"]
    return next((adapter for adapter in adapters if adapter["name"] == name), {})


def test_two_regions_fine_tuning_one_name_serve_each_job_and_their_stack_everywhere(
    regions: dict[str, _Region],
) -> None:
    clients = {name: region.client() for name, region in regions.items()}
    prompts = [prompt for prompt, _ in TAUGHT.values()]
    base = {name: [_answer(client, MODEL, p) for p in prompts] for name, client in clients.items()}
    assert base["a"] == base["b"]
    assert not set(base["a"]) & {taught for _, taught in TAUGHT.values()}
    jobs = {}
    for name, (prompt, taught) in TAUGHT.items():
        example = {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": taught}]}
        dataset = "".join(json.dumps(example) + "\n" for _ in range(64)).encode()
        uploaded = clients[name].files.create(file=(f"{prompt}.jsonl", dataset), purpose="fine-tune")
        jobs[name] = clients[name].fine_tuning.jobs.create(
            training_file=uploaded.id,
            model=MODEL,
            suffix="shared",
            hyperparameters={"n_epochs": 6, "batch_size": 8, "learning_rate_multiplier": 1},
        )
    deadline = time.monotonic() + 400
    for name, job in jobs.items():
        while (job := clients[name].fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, f"still {job.status}"
            assert regions[name].worker.process.poll() is None, regions[name].worker.output()
            time.sleep(0.5)
        assert job.status == "succeeded", job.error
        assert job.fine_tuned_model is not None
        assert job.fine_tuned_model.startswith(STACKED + ":")
        jobs[name] = job
        prompt, taught = TAUGHT[name]
        assert _answer(clients[name], job.fine_tuned_model, prompt) == taught  # in its region, as it says so
    for name, job in jobs.items():
        other = "b" if name == "a" else "a"
        with pytest.raises(openai.NotFoundError):
            clients[other].fine_tuning.jobs.retrieve(job.id)  # its own database: never heard of the job
        model = str(job.fine_tuned_model)
        _eventually(partial(_lists, clients[other], model), f"region {other} serves {model}")
        assert _answer(clients[other], model, TAUGHT[name][0]) == TAUGHT[name][1]

    def stacked_everywhere() -> bool:
        for region in regions.values():
            adapter = _served(region.sidecar)
            served: dict[str, Any] = adapter.get("served") or {}
            if sorted(part[0] for part in served.get("parts", [])) != ["a", "b"]:
                return False
            if adapter.get("stacked") != served["digest"] or not all(dict(adapter["loaded"]).values()):
                return False
        return True

    _eventually(stacked_everywhere, "both regions serve the stack of both parts")
    stack = _served(regions["a"].sidecar)["served"]
    assert _served(regions["b"].sidecar)["served"] == stack  # the same recipe, so the same merged weights
    # Its parts are the jobs' own adapters, each region's at weight 1.
    jobs_versions = [
        [name, _served(regions[name].sidecar, str(job.fine_tuned_model))["served"]["parts"][0][1], 1.0]
        for name, job in jobs.items()
    ]
    assert stack["parts"] == jobs_versions
    _eventually(lambda: all(_lists(client, STACKED) for client in clients.values()), "both gateways list the stack")
    answers = {name: [_answer(client, STACKED, p) for p in prompts] for name, client in clients.items()}
    assert answers["a"] == answers["b"] != base["a"]
    assert {name: [_answer(client, MODEL, p) for p in prompts] for name, client in clients.items()} == base
