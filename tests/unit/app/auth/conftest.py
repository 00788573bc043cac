"""The auth tests' gateways, in process over a counting engine: one with the built-in issuer
(`issuing`), and one in `external` mode (`external`) that trusts the first one's keys through
a JWKS server (`jwks`, a `JsonDocument` on loopback, which counts its fetches)."""

import contextlib
import itertools
import json
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc.jwk import ECKey
from starlette.types import ASGIApp

from app.auth.secrets import hash_secret
from app.settings import GatewaySettings
from harness.counting_engine import MODEL, CountingEngine
from harness.inprocess import gateway_in_process

ISSUER = "https://issuer.test"
ENGINE = "http://engine"
SECRETS = {"svc": "svc-secret", "ops": "ops-secret", "tuner": "tuner-secret"}
SCOPES = {"svc": ["chat"], "ops": ["chat", "admin"], "tuner": ["finetune"]}
# Hashed once: scrypt takes tens of milliseconds a secret.
CLIENTS = [{"client_id": c, "secret_hash": hash_secret(s), "scopes": SCOPES[c]} for c, s in SECRETS.items()]
# The token endpoint throttles per client address, in the whole process: each gateway's client has its own.
_addresses = itertools.count(1)


@dataclass
class Gateway:
    """A gateway in process: its settings, its app, and a client from an address of its own
    (other clients, the OpenAI SDK's, take the app and the address)."""

    settings: GatewaySettings
    app: ASGIApp
    address: tuple[str, int]
    client: httpx.AsyncClient

    def signing_key(self) -> ECKey:
        """The built-in issuer's newest key, read from where it keeps it."""
        entry = json.loads((self.settings.data_dir / "auth" / "signing-keys.json").read_text())["keys"][-1]
        return ECKey.import_key({k: v for k, v in entry.items() if k != "created_at"})

    async def token(self, client: str, **form: str) -> httpx.Response:
        """The token endpoint's answer to `client`, with its secret."""
        data = {"grant_type": "client_credentials", **form}
        return await self.client.post("/oauth/token", data=data, auth=(client, SECRETS[client]))

    async def chat(self, token: str | None, **headers: str) -> httpx.Response:
        if token is not None:
            headers["authorization"] = f"Bearer {token}"
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        return await self.client.post("/v1/chat/completions", json=body, headers=headers)


def settings_of(data_dir: Path, **values: Any) -> GatewaySettings:
    """One pool on the counting engine, the built-in issuer (`values` on top)."""
    fields = {"pools": [{"name": "p", "replicas": [ENGINE]}], "data_dir": str(data_dir), "auth_mode": "builtin",
              "auth_issuer": ISSUER, "auth_clients": CLIENTS}  # fmt: skip
    return GatewaySettings.model_validate(fields | values)


@contextlib.asynccontextmanager
async def serving(settings: GatewaySettings) -> AsyncIterator[Gateway]:
    async with gateway_in_process(settings, {ENGINE: CountingEngine().app}) as gateway:
        n = next(_addresses)
        address = (f"198.18.{n >> 8 & 255}.{n & 255}", 40000)
        transport = httpx.ASGITransport(app=gateway.app, client=address)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=30) as client:
            yield Gateway(settings, gateway.app, address, client)


@pytest.fixture
async def issuing(tmp_path: Path) -> AsyncIterator[Gateway]:
    """A gateway with the built-in issuer, its key made in a data dir of its own."""
    async with serving(settings_of(tmp_path)) as gateway:
        yield gateway


class JsonDocument:
    """Another issuer's JSON document on loopback (its JWKS, its metadata), which counts its
    fetches: `document` for any path ending with `path` (every path when it is empty), those in
    `others` for paths ending with their keys, a 404 for others or while `document` is None.
    `url` is what clients are given."""

    def __init__(self, url_path: str = "/jwks.json", path: str = "") -> None:
        self.document: dict[str, Any] | None = {"keys": []}
        self.others: dict[str, dict[str, Any]] = {}
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                found = outer.document if self.path.endswith(path) else None
                for end, other in outer.others.items():
                    found = other if self.path.endswith(end) else found
                body = json.dumps(found if found is not None else {}).encode()
                self.send_response(200 if found is not None else 404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{url_path}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def jwks() -> Iterator[JsonDocument]:
    served = JsonDocument()
    yield served
    served.close()


@pytest.fixture
async def external(issuing: Gateway, jwks: JsonDocument, tmp_path: Path) -> AsyncIterator[Gateway]:
    """A second gateway that trusts the first one's keys through the JWKS URL."""
    jwks.document = (await issuing.client.get("/.well-known/jwks.json")).json()
    settings = GatewaySettings.model_validate(
        {
            "pools": [{"name": "p", "replicas": [ENGINE]}],
            "data_dir": str(tmp_path / "external"),
            "auth_mode": "external",
            "auth_issuer": ISSUER,
            "auth_jwks": jwks.url,
        }
    )
    async with serving(settings) as gateway:
        yield gateway
