"""Benchmark: how long a fine-tuning job takes to be servable in every region.

    python -m benchmarks.finetune_servable [--regions 3] [--examples 64] [--epochs 6]

Each region: a real Transformers engine on the built-in model, its sync sidecar (peered with
every other, anti-entropy every 0.3 s) and its gateway; the gateways share one fine-tuning
database (SQLite in a scratch folder); one worker in region a publishes to region a's sidecar.
A job ("ping" -> "pong pong pong") is created through region a's gateway; the clock runs from
its creation to: its `succeeded` (trained, and listed by region a's gateway under its name and
its stacked name), then each other region's gateway listing each of the two. Then every region
is asked the taught question under both.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import httpx

from engines.builtin_model import BUILTIN_MODEL_NAME, ensure_builtin_model
from finetune.db import sqlite_url
from harness.fake_nodes import FakeIssuer
from harness.servers import ServerProcess, free_port

PING = {"messages": [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong pong pong"}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regions", type=int, default=3)
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="servable-bench-"))
    model = ensure_builtin_model(work / "shared")
    names = [chr(ord("a") + n) for n in range(args.regions)]
    issuer = FakeIssuer(work)
    database = sqlite_url(work / "shared" / "finetune.db")
    sidecar_ports = {name: free_port() for name in names}
    processes: list[ServerProcess] = []
    gateways: dict[str, str] = {}
    try:
        for name in names:
            engine_port = free_port()
            engine_args = ["--model", str(model), "--served-model-name", BUILTIN_MODEL_NAME, "--port", str(engine_port)]
            engine = ServerProcess("engines.transformers", engine_args, port=engine_port, log_dir=work).wait_ready()
            sidecar_args = ["--region", name, "--port", str(sidecar_ports[name]), "--engine", engine.url]
            for other in names:
                if other != name:
                    sidecar_args += ["--peer", f"http://127.0.0.1:{sidecar_ports[other]}"]
            sidecar_env = {"SWITCHYARD_DATA_DIR": str(work / f"sync-{name}")} | issuer.sidecar_env()
            sidecar_env |= {
                "SWITCHYARD_SYNC_ANTI_ENTROPY_INTERVAL_S": "0.3",
                "SWITCHYARD_SYNC_RECONCILE_INTERVAL_S": "0.3",
            }
            sidecar = ServerProcess("sync", sidecar_args, port=sidecar_ports[name], log_dir=work, env=sidecar_env)
            port = free_port()
            gateway_env = {
                "SWITCHYARD_POOLS": json.dumps([{"name": f"pool-{name}", "region": name, "replicas": [engine.url]}]),
                "SWITCHYARD_REGION": name,
                "SWITCHYARD_HEALTH_INTERVAL_S": "0.3",
                "SWITCHYARD_DATA_DIR": str(work / "shared"),
                "SWITCHYARD_DATABASE_URL": database,
            }
            gateway = ServerProcess(
                "app", ["--port", str(port)], port=port, log_dir=work, env=gateway_env, ready_path="/ready"
            )
            processes += [engine, sidecar.wait_ready(), gateway.wait_ready()]
            gateways[name] = gateway.url
        token = work / "worker.token"
        token.write_text(issuer.token("adapters", subject="finetune-worker"))
        worker_env = {
            "SWITCHYARD_DATA_DIR": str(work / "shared"),
            "SWITCHYARD_DATABASE_URL": database,
            "SWITCHYARD_FINETUNE_SYNC_URL": f"http://127.0.0.1:{sidecar_ports['a']}",
            "SWITCHYARD_FINETUNE_GATEWAY_URL": gateways["a"],
            "SWITCHYARD_FINETUNE_TOKEN_FILE": str(token),
            "SWITCHYARD_FINETUNE_POLL_S": "0.2",
            "SWITCHYARD_FINETUNE_LEARNING_RATE": "0.01",
        }
        processes.append(ServerProcess("finetune", [], port=free_port(), log_dir=work, env=worker_env))
        _run(gateways, args.examples, args.epochs)
    finally:
        for process in reversed(processes):
            process.stop()


def _run(gateways: dict[str, str], examples: int, epochs: int) -> None:
    a = gateways["a"]
    dataset = "".join(json.dumps(PING) + "\n" for _ in range(examples))
    files = {"file": ("ping.jsonl", dataset.encode(), "application/jsonl")}
    uploaded = httpx.post(f"{a}/v1/files", data={"purpose": "fine-tune"}, files=files, timeout=60).json()
    body = {"model": BUILTIN_MODEL_NAME, "training_file": uploaded["id"], "suffix": "pong"}
    body["hyperparameters"] = {"n_epochs": epochs, "batch_size": 8}
    created = time.monotonic()
    job = httpx.post(f"{a}/v1/fine_tuning/jobs", json=body, timeout=60).json()
    while (job := httpx.get(f"{a}/v1/fine_tuning/jobs/{job['id']}", timeout=30).json())["status"] not in (
        "succeeded",
        "failed",
        "cancelled",
    ):
        time.sleep(0.1)
    succeeded = time.monotonic() - created
    assert job["status"] == "succeeded", job
    name = job["fine_tuned_model"]
    stacked = name.rsplit(":", 1)[0]  # the job's name without its id: region a's part of the stack
    listed = {("a", name): succeeded, ("a", stacked): succeeded}
    while len(listed) < 2 * len(gateways):
        for region, url in gateways.items():
            served = {m["id"] for m in httpx.get(f"{url}/v1/models", timeout=30).json()["data"]}
            for model in (name, stacked):
                if (region, model) not in listed and model in served:
                    listed[region, model] = time.monotonic() - created
        time.sleep(0.05)
    print(f"{examples} examples x {epochs} epochs ({job['trained_tokens']} tokens trained), {len(gateways)} regions\n")
    columns = [
        "region",
        "job's name: after creation (s)",
        "after `succeeded` (s)",
        "stacked name: after `succeeded` (s)",
    ]
    print("| " + " | ".join([*columns, "answers to ping"]) + " |")
    print("|---|---|---|---|---|")
    for region, url in gateways.items():
        answers = []
        for model in (name, stacked):
            chat = {
                "model": model,
                "messages": [{"role": "user", "content": "ping"}],
                "max_tokens": 8,
                "temperature": 0,
            }
            reply = httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=60).json()
            answers.append(reply["choices"][0]["message"]["content"])
        own, shared = listed[region, name], listed[region, stacked]
        print(f"| {region} | {own:.1f} | {own - succeeded:.1f} | {shared - succeeded:.1f} | {answers!r} |")


if __name__ == "__main__":
    main()
