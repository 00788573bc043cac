"""A full engine queue reaches the client as 503 with Retry-After, through the gateway, at once."""

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.servers import ServerProcess, free_port
from tests.conftest import MODEL


@pytest.fixture(scope="module")
def one_slot_gateway(builtin_model: Path, log_dir: Path) -> Iterator[ServerProcess]:
    port = free_port()
    args = ["--model", str(builtin_model), "--served-model-name", MODEL, "--port", str(port)]
    engine = ServerProcess(
        "engines.transformers", [*args, "--max-num-seqs", "1", "--max-queued-requests", "0"], port=port, log_dir=log_dir
    ).wait_ready()
    gateway_port = free_port()
    pools = [{"name": "tight", "replicas": [engine.url]}]
    gateway = ServerProcess(
        "app",
        ["--port", str(gateway_port)],
        port=gateway_port,
        log_dir=log_dir,
        env={"SWITCHYARD_POOLS": json.dumps(pools)},
    ).wait_ready()
    yield gateway
    gateway.stop()
    engine.stop()


def test_full_queue_is_an_immediate_503_with_retry_after(one_slot_gateway: ServerProcess) -> None:
    # Seeded: unseeded sampling from a random model may reach end-of-sequence early.
    long = {"model": MODEL, "messages": [{"role": "user", "content": "go"}], "max_tokens": 1500, "seed": 7}
    long |= {"stream": True}
    with httpx.stream("POST", one_slot_gateway.url + "/v1/chat/completions", json=long, timeout=60) as running:
        lines = running.iter_lines()  # kept: a dropped line iterator closes the stream, ending the request
        next(line for line in lines if '"content":"' in line and '"role"' not in line)
        started = time.monotonic()
        refused = httpx.post(one_slot_gateway.url + "/v1/chat/completions", json=long | {"stream": False}, timeout=10)
        elapsed = time.monotonic() - started
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "engine_overloaded"
    assert elapsed < 1.0, f"the refusal took {elapsed:.2f} s"
