"""What the auth and token-endpoint property tests share: one gateway app in `builtin` mode,
in process for a whole module, signing with KEY, and a check that no request logged a
traceback (each 500 of the catch-all logs one)."""

import asyncio
import itertools
import json
import logging
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI
from joserfc.jwk import ECKey

from app.auth.secrets import hash_secret
from app.factory import create_app
from app.settings import GatewaySettings
from tests.unit.app.auth.conftest import ISSUER

__all__ = ["CLIENT", "KEY", "SECRET", "Tracebacks", "send"]

CLIENT, SECRET = "svc", "svc-secret"
KEY = ECKey.generate_key("P-256", private=True)
KEY.ensure_kid()

_hosts = itertools.count(1)


class Tracebacks(logging.Handler):
    """Collects every log record that carries an exception (the app's catch-all logs one per 500)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.levelno >= logging.ERROR:
            self.records.append(record)


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as loop:
        yield loop


@pytest.fixture(scope="module")
def tracebacks() -> Iterator[Tracebacks]:
    handler = Tracebacks()
    logging.getLogger().addHandler(handler)
    yield handler
    logging.getLogger().removeHandler(handler)
    assert not handler.records, [record.getMessage() for record in handler.records]


@pytest.fixture(scope="module")
def app(runner: asyncio.Runner, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    """The gateway in `builtin` mode, signing with KEY (written where it keeps its key, in its
    format), its lifespan run; its one replica is nowhere (port 9)."""
    data_dir = tmp_path_factory.mktemp("auth-fuzz")
    (data_dir / "auth").mkdir(mode=0o700)
    entry = {**KEY.as_dict(private=True), "created_at": time.time()}
    (data_dir / "auth" / "signing-keys.json").write_text(json.dumps({"keys": [entry]}))
    values = {
        "pools": [{"name": "p", "replicas": ["http://127.0.0.1:9"]}],
        "data_dir": str(data_dir),
        "auth_mode": "builtin",
        "auth_issuer": ISSUER,
        "auth_clients": [{"client_id": CLIENT, "secret_hash": hash_secret(SECRET), "scopes": ["chat"]}],
    }
    gateway = create_app(GatewaySettings.model_validate(values))
    lifespan = gateway.router.lifespan_context(gateway)
    runner.run(lifespan.__aenter__())
    yield gateway
    runner.run(lifespan.__aexit__(None, None, None))


def send(
    runner: asyncio.Runner, app: FastAPI, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes
) -> httpx.Response:
    """One request, from a client address of its own (the token endpoint throttles per address)."""
    n = next(_hosts)
    transport = httpx.ASGITransport(app=app, client=(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", 40000))

    async def request() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return await client.request(method, path, headers=headers, content=body)

    return runner.run(request())
