"""The console's routes (app/api/console.py), through a gateway app in process: its build
served with the right caching and policy, any of its routes answered with its page, nothing
outside the build reachable, a one-line answer when it is not built, and its settings for
each way of signing in."""

import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.api.console import NOT_BUILT
from app.factory import create_app
from app.settings import GatewaySettings
from harness.servers import ROOT
from tests.unit.app.auth.conftest import JsonDocument

PAGE = '<!doctype html><div id="root"></div><script type="module" src="/console/assets/index-abc123.js"></script>'


@pytest.fixture
def build(tmp_path: Path) -> Path:
    (tmp_path / "dist" / "assets").mkdir(parents=True)
    (tmp_path / "dist" / "index.html").write_text(PAGE)
    (tmp_path / "dist" / "assets" / "index-abc123.js").write_text("console.log(1)")
    (tmp_path / "secret.txt").write_text("not for the web")
    return tmp_path / "dist"


def client(tmp_path: Path, **values: Any) -> httpx.AsyncClient:
    fields = {"data_dir": str(tmp_path / "data"), "auth_mode": "disabled",
              "pools": [{"name": "p", "replicas": ["http://engine"]}]}  # fmt: skip
    settings = GatewaySettings.model_validate(fields | values)
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    gateway = httpx.AsyncClient(transport=transport, base_url="http://gateway")
    gateway.site = app.state.console  # type: ignore[attr-defined]
    return gateway


def forget_failure(gateway: httpx.AsyncClient) -> None:
    """As if the 30 s after a failed read of the issuer's metadata had passed."""
    gateway.site._failed_at = -math.inf  # type: ignore[attr-defined]


async def test_the_build_is_served_with_its_policy_and_caching(tmp_path: Path, build: Path) -> None:
    async with client(tmp_path, console_dir=str(build)) as gateway:
        moved = await gateway.get("/console")
        assert moved.status_code == 308
        assert moved.headers["location"] == "/console/"
        for path in ("/console/", "/console/fleet", "/console/callback?code=x&state=y", "/console/a/b/c"):
            page = await gateway.get(path)
            assert page.status_code == 200, path
            assert page.text == PAGE
            assert page.headers["content-type"].startswith("text/html")
            assert page.headers["cache-control"] == "no-cache"
            policy = page.headers["content-security-policy"]
            assert "script-src 'self'" in policy
            assert "frame-ancestors 'none'" in policy
            assert "unsafe-inline" not in policy
        asset = await gateway.get("/console/assets/index-abc123.js")
        assert asset.status_code == 200
        assert asset.text == "console.log(1)"
        assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"


@pytest.mark.parametrize(
    "path",
    [
        "/console/assets/missing.js",  # a missing asset is a 404, never the page in its place
        "/console/assets/..%2Findex.html",
        "/console/assets/..%2F..%2Fsecret.txt",
        "/console/assets/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/console/assets/.hidden",
    ],
)
async def test_nothing_outside_the_assets_is_served_as_one(tmp_path: Path, build: Path, path: str) -> None:
    async with client(tmp_path, console_dir=str(build)) as gateway:
        answer = await gateway.get(path)
        assert answer.status_code == 404
        assert "not for the web" not in answer.text
        assert answer.text != PAGE


async def test_without_a_build_the_console_says_how_to_make_one_and_the_api_is_served(tmp_path: Path) -> None:
    async with client(tmp_path, console_dir=str(tmp_path / "nowhere")) as gateway:
        answer = await gateway.get("/console/")
        assert answer.status_code == 404
        assert answer.text == NOT_BUILT
        assert answer.text.count("\n") == 1
        assert (await gateway.get("/health")).status_code == 200
        assert (await gateway.get("/console/config.json")).status_code == 200
    target = re.search(r"`make (\S+)`", NOT_BUILT)
    assert target is not None
    assert re.search(rf"^{target.group(1)}:", (ROOT / "Makefile").read_text(), re.MULTILINE)


async def test_the_settings_name_the_built_in_sign_in(tmp_path: Path) -> None:
    async with client(tmp_path, auth_mode="builtin", region="eu") as gateway:
        config = (await gateway.get("/console/config.json")).json()
    assert config == {
        "region": "eu",
        "sync": False,
        "auth": {
            "mode": "builtin",
            "authorization_endpoint": "/oauth/authorize",
            "token_endpoint": "/oauth/token",
            "client_id": "switchyard-console",
            "scopes": ["chat", "finetune", "adapters", "admin"],
        },
    }
    async with client(tmp_path) as gateway:
        assert (await gateway.get("/console/config.json")).json()["auth"] == {"mode": "disabled"}


@pytest.fixture
def issuer() -> Iterator[JsonDocument]:
    """An external issuer whose OpenID Connect discovery document (only: its RFC 8414 one is
    missing) can be changed; none at first."""
    served = JsonDocument("/realms/ops", path="/.well-known/openid-configuration")
    served.document = None
    yield served
    served.close()


async def test_an_external_issuer_s_endpoints_come_from_its_metadata(
    tmp_path: Path, build: Path, issuer: JsonDocument
) -> None:
    values = {"auth_mode": "external", "auth_issuer": issuer.url, "auth_jwks": issuer.url + "/certs",
              "console_client_id": "ops-console", "console_dir": str(build)}  # fmt: skip
    async with client(tmp_path, **values) as gateway:
        unavailable = await gateway.get("/console/config.json")
        assert unavailable.status_code == 503
        assert unavailable.json()["error"]["code"] == "issuer_unavailable"
        assert (await gateway.get("/console/")).status_code == 200  # the page loads; its config says why

        fetches = issuer.fetches
        assert (await gateway.get("/console/config.json")).status_code == 503
        assert issuer.fetches == fetches  # a failed read is not tried again at once (30 s)
        forget_failure(gateway)

        issuer.document = {"authorization_endpoint": "http://idp.example/auth", "token_endpoint": "https://x/t"}
        assert (await gateway.get("/console/config.json")).status_code == 503  # endpoints over plain HTTP
        forget_failure(gateway)

        issuer.document = {"authorization_endpoint": "https://idp.example/auth",
                           "token_endpoint": "https://idp.example:8443/token"}  # fmt: skip
        config = (await gateway.get("/console/config.json")).json()
        assert config["auth"] == {"mode": "external", "authorization_endpoint": "https://idp.example/auth",
                                  "token_endpoint": "https://idp.example:8443/token", "client_id": "ops-console",
                                  "scopes": ["chat", "finetune", "adapters", "admin"]}  # fmt: skip
        policy = (await gateway.get("/console/")).headers["content-security-policy"]
        assert "connect-src 'self' https://idp.example:8443;" in policy


@pytest.mark.parametrize(
    ("end_session", "offered"),
    [("https://idp.example/logout", True), ("http://127.0.0.1:8080/logout", True),
     ("http://idp.example/logout", False), (["https://idp.example/logout"], False), (None, False),
     ("javascript:alert(1)//https://idp.example", False), ("http://evil.example\\@127.0.0.1/logout", False),
     ("https://idp.example/log out", False)],
)  # fmt: skip
async def test_an_external_issuer_s_logout_is_offered_only_over_https(
    tmp_path: Path, issuer: JsonDocument, end_session: object, offered: bool
) -> None:
    """Signing out ends the provider's session too (OpenID Connect RP-initiated logout), where
    its metadata names a logout endpoint the browser can be sent to safely; without one,
    signing in still works."""
    issuer.document = {"authorization_endpoint": "https://idp.example/auth", "token_endpoint": "https://idp.example/t"}
    if end_session is not None:
        issuer.document["end_session_endpoint"] = end_session
    values = {"auth_mode": "external", "auth_issuer": issuer.url, "auth_jwks": issuer.url + "/certs"}
    async with client(tmp_path, **values) as gateway:
        answer = await gateway.get("/console/config.json")
    assert answer.status_code == 200
    auth = answer.json()["auth"]
    assert auth["authorization_endpoint"] == "https://idp.example/auth"
    assert auth.get("end_session_endpoint") == (end_session if offered else None)


async def test_the_logout_endpoint_may_come_from_the_openid_document_alone(tmp_path: Path) -> None:
    """Sign-in endpoints from RFC 8414's document, logout from OpenID Connect's, as providers
    that serve both often do."""
    issuer = JsonDocument("/realms/ops", path="/.well-known/oauth-authorization-server")
    sign_in = {"authorization_endpoint": "https://idp.example/auth", "token_endpoint": "https://idp.example/t"}
    issuer.document = sign_in
    issuer.others["/.well-known/openid-configuration"] = sign_in | {"end_session_endpoint": "https://idp.example/bye"}
    try:
        values = {"auth_mode": "external", "auth_issuer": issuer.url, "auth_jwks": issuer.url + "/certs"}
        async with client(tmp_path, **values) as gateway:
            auth = (await gateway.get("/console/config.json")).json()["auth"]
    finally:
        issuer.close()
    assert auth["end_session_endpoint"] == "https://idp.example/bye"
    assert auth["token_endpoint"] == "https://idp.example/t"
