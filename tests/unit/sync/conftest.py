"""A sidecar in process for each test module: its app (lifespan running), its node, a trusted
issuer whose tokens it takes and whose peer key it shares, and a registry seeded with `VALID`."""

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from harness.fake_nodes import FakeIssuer
from sync.app import create_app
from sync.node import SyncNode
from sync.settings import SyncSettings
from tests.unit.sync.hostile import VALID, dumps, peer_headers


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> FakeIssuer:
    return FakeIssuer(tmp_path_factory.mktemp("issuer"))


@pytest.fixture(scope="module")
def settings(issuer: FakeIssuer, tmp_path_factory: pytest.TempPathFactory) -> SyncSettings:
    return SyncSettings(
        data_dir=tmp_path_factory.mktemp("data"),
        auth_issuer=issuer.issuer,
        auth_jwks=str(issuer.jwks),
        peer_key=issuer.peer_key,
    )


@pytest.fixture(scope="module")
def app(settings: SyncSettings) -> FastAPI:
    return create_app(settings)


@pytest.fixture(scope="module")
def node(app: FastAPI) -> SyncNode:
    found: SyncNode = app.state.node
    return found


@pytest.fixture(scope="module")
def client(app: FastAPI, issuer: FakeIssuer) -> Iterator[TestClient]:
    with TestClient(app) as client:  # an exception that escapes the app fails the test
        seeded = client.post("/sync/delta", content=dumps(VALID), headers=peer_headers(issuer))
        assert seeded.status_code == 200, seeded.text
        yield client
