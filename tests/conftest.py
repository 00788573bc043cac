"""Shared fixtures: the built-in model, a real engine process and a real gateway in front of it."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from engines.builtin_model import BUILTIN_MODEL_NAME, ensure_builtin_model
from harness.servers import Redis, ServerProcess, free_port

MODEL = BUILTIN_MODEL_NAME

# Property tests explore the same examples on every run (a red CI run reproduces), with no
# per-example deadline: the machines are shared, and speed is measured in benchmarks.
settings.register_profile(
    "switchyard", derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("switchyard")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def builtin_model(data_dir: Path) -> Path:
    return ensure_builtin_model(data_dir)


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


def start_engine(model: Path, served_model_name: str, log_dir: Path, port: int | None = None) -> ServerProcess:
    """A real Transformers engine process, answering (on `port` to stand in for one that died)."""
    port = port or free_port()
    args = ["--model", str(model), "--served-model-name", served_model_name, "--port", str(port)]
    return ServerProcess("engines.transformers", args, port=port, log_dir=log_dir).wait_ready()


@pytest.fixture(scope="session")
def engine(builtin_model: Path, log_dir: Path) -> Iterator[ServerProcess]:
    """The built-in model on a real engine, for the whole session."""
    server = start_engine(builtin_model, MODEL, log_dir)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def counting_engine(log_dir: Path) -> Iterator[ServerProcess]:
    """A counting engine (harness/counting_engine.py) for one test module: it records executions."""
    port = free_port()
    server = ServerProcess("harness.counting_engine", ["--port", str(port)], port=port, log_dir=log_dir).wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gateway(engine: ServerProcess, log_dir: Path) -> Iterator[ServerProcess]:
    """A real gateway (uvicorn) routing to the engine above."""
    port = free_port()
    pools = [{"name": "local", "region": "local", "kind": "transformers", "replicas": [engine.url]}]
    server = ServerProcess(
        "app",
        ["--port", str(port)],
        port=port,
        log_dir=log_dir,
        # Its one replica may be ejected at all, so a test that no request ejects it can fail.
        env={
            "SWITCHYARD_POOLS": json.dumps(pools),
            "SWITCHYARD_HEALTH_INTERVAL_S": "0.5",
            "SWITCHYARD_MAX_EJECTED_FRACTION": "1.0",
        },
        ready_path="/ready",
    ).wait_ready()
    yield server
    server.stop()


@pytest.fixture
def redis() -> Iterator[Redis]:
    """A redis-server of the test's own (it may stop it)."""
    server = Redis()
    yield server
    server.stop()
