"""The worker's publishers against a real sync sidecar and a real engine: a part's token names
it, so a withdrawal or a `put` that `replaces` acts only while the region's part is still the
one it names (a newer part, even of the very same weights, is left as it is), and a sidecar
without the withdrawal route is a failure, not a quiet success."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from finetune.publish import Credentials, EnginePublisher, NotServable, Serving, SidecarPublisher, Superseded
from harness.adapters import make_lora_adapter
from harness.fake_nodes import FakeIssuer
from harness.servers import ServerProcess, free_port
from tests.conftest import MODEL, start_engine

NAME = "ft:tiny:aaaaaaaaaaaaaaaa:bot"


@pytest.fixture
def engine(builtin_model: Path, log_dir: Path) -> Iterator[ServerProcess]:
    process = start_engine(builtin_model, MODEL, log_dir)
    yield process
    process.stop()


@pytest.fixture
def adapters(builtin_model: Path, tmp_path: Path) -> list[Path]:
    return [make_lora_adapter(builtin_model, tmp_path / f"adapter-{seed}", seed=seed) for seed in (1, 2)]


async def test_a_sidecar_part_changes_only_while_it_is_the_part_named(
    engine: ServerProcess, adapters: list[Path], log_dir: Path, tmp_path: Path
) -> None:
    issuer = FakeIssuer(tmp_path)
    port = free_port()
    env = {"SWITCHYARD_DATA_DIR": str(tmp_path / "sync")} | issuer.sidecar_env()
    args = ["--region", "a", "--port", str(port), "--engine", engine.url]
    sidecar = ServerProcess("sync", args, port=port, log_dir=log_dir, env=env).wait_ready()
    try:
        token_file = tmp_path / "token"
        token_file.write_text(issuer.token("adapters"))
        publisher = SidecarPublisher(sidecar.url, Credentials(token_file=token_file), Serving("http://unused"))
        first = await publisher.put(NAME, adapters[0], MODEL)
        second = await publisher.put(NAME, adapters[0], MODEL)  # the same weights, a later job's part
        assert int(second) == int(first) + 1
        await publisher.withdraw(NAME, first)  # not the part now: left
        with pytest.raises(Superseded):
            await publisher.put(NAME, adapters[1], MODEL, replaces=first)
        assert _part(sidecar) == (int(second), True)
        third = await publisher.put(NAME, adapters[1], MODEL, replaces=second)
        await publisher.withdraw(NAME, third)
        assert _part(sidecar) == (int(third) + 1, False)
        await publisher.withdraw(NAME, third)  # nothing left to withdraw: done already
        old = SidecarPublisher(f"{sidecar.url}/old", Credentials(token_file=token_file), Serving("http://unused"))
        with pytest.raises(NotServable, match="refused it"):
            await old.withdraw(NAME, third)  # a route this sidecar lacks: a plain 404
    finally:
        sidecar.stop()


def _part(sidecar: ServerProcess) -> tuple[int, bool]:
    """Region a's part of NAME: its sequence number, and whether it serves an adapter."""
    adapters = httpx.get(f"{sidecar.url}/adapters", timeout=10).json()["adapters"]
    part = next(adapter for adapter in adapters if adapter["name"] == NAME)["contributions"]["a"]
    return part["seq"], part["version"] is not None


async def test_an_engine_part_changes_only_while_the_engine_serves_the_folder_named(
    engine: ServerProcess, adapters: list[Path]
) -> None:
    publisher = EnginePublisher(engine.url, None, Serving("http://unused"))
    first = await publisher.put(NAME, adapters[0], MODEL)
    other = EnginePublisher(engine.url, None, Serving("http://unused"))  # another worker on this engine
    second = await other.put(NAME, adapters[1], MODEL)
    await publisher.withdraw(NAME, first)  # the engine serves the other's folder now: left
    with pytest.raises(Superseded):
        await publisher.put(NAME, adapters[0], MODEL, replaces=first)
    assert _root(engine) == str(adapters[1])
    await other.withdraw(NAME, second)
    assert _root(engine) is None


def _root(engine: ServerProcess) -> str | None:
    cards = httpx.get(f"{engine.url}/v1/models", timeout=10).json()["data"]
    return next((str(card["root"]) for card in cards if card["id"] == NAME), None)
