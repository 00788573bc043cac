"""The console with `auth_mode: external`, in Debian's Chromium: signing in at a real OpenID
Connect provider (node-oidc-provider, console/e2e/oidc-issuer.mjs) with PKCE, exchanging the
code at its token endpoint from the page (CORS), calling the gateway with its RFC 9068
access token, and signing out of the provider's session too."""

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from harness.servers import ROOT, ServerProcess, free_port


@pytest.fixture(scope="module")
def provider_and_gateway(builtin_model: Path, log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
    tuple[str, ServerProcess]
]:  # fmt: skip
    issuer_port, port = free_port(), free_port()
    issuer = f"http://127.0.0.1:{issuer_port}"
    console = f"http://127.0.0.1:{port}"
    command = ["node", "e2e/oidc-issuer.mjs", str(issuer_port), f"{console}/console/callback", console]
    with (log_dir / "oidc-issuer.log").open("wb") as log:
        provider = subprocess.Popen(command, cwd=ROOT / "console", stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{issuer}/.well-known/openid-configuration").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert provider.poll() is None, (log_dir / "oidc-issuer.log").read_text()
            assert time.monotonic() < deadline, "the OpenID provider did not start"
            time.sleep(0.2)
        data = tmp_path_factory.mktemp("external-gateway")
        (data / "models").symlink_to(builtin_model.parent)
        env = {
            "SWITCHYARD_DATA_DIR": str(data),
            "SWITCHYARD_AUTH_MODE": "external",
            "SWITCHYARD_AUTH_ISSUER": issuer,
            "SWITCHYARD_AUTH_JWKS": f"{issuer}/jwks",
            "SWITCHYARD_CONSOLE_CLIENT_ID": "ops-console",
            "SWITCHYARD_EMBEDDED_FINETUNE_WORKER": "false",
        }
        gateway = ServerProcess("app", ["--port", str(port)], port=port, log_dir=log_dir, env=env).wait_ready()
        yield issuer, gateway
        gateway.stop()
    finally:
        provider.terminate()
        provider.wait(timeout=10)


def test_signing_in_at_an_external_provider(page: Page, provider_and_gateway: tuple[str, ServerProcess]) -> None:
    issuer, gateway = provider_and_gateway
    config = httpx.get(f"{gateway.url}/console/config.json").json()["auth"]
    assert config["authorization_endpoint"] == f"{issuer}/auth"
    assert config["token_endpoint"] == f"{issuer}/token"
    assert f"connect-src 'self' {issuer};" in httpx.get(f"{gateway.url}/console/").headers["content-security-policy"]

    page.goto(gateway.url + "/console/playground")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(re.escape(issuer)))
    page.locator("input[name=login]").fill("grace")
    page.locator("input[name=password]").fill("anything")
    page.get_by_role("button", name=re.compile("Sign-in", re.I)).click()
    page.get_by_role("button", name=re.compile("Continue", re.I)).click()  # the provider's consent
    page.wait_for_url(gateway.url + "/console/playground")
    expect(page.get_by_label("Signed in as")).to_have_text("grace")
    nav = page.get_by_role("navigation", name="Pages")
    expect(nav.get_by_role("link")).to_have_text(["Fleet", "Playground", "Adapters", "Fine-tuning", "Usage"])

    page.get_by_label("Max tokens").fill("4")
    page.get_by_label("Message").fill("hello from an external sign-in")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_role("button", name="Send")).to_be_visible(timeout=30_000)
    expect(page.get_by_role("alert")).to_have_count(0)
    assert page.locator('[data-role="assistant"]').first.inner_text().strip()
    page.get_by_role("link", name="Fleet").click()
    expect(page.get_by_role("row", name="Replica embedded-0")).to_be_visible()

    # Signing out ends the provider's session too: the next sign-in asks for the password
    # again, where the provider would otherwise have sent the browser straight back.
    assert config["end_session_endpoint"] == f"{issuer}/session/end"
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(re.compile(re.escape(issuer)))
    page.get_by_role("button", name=re.compile("Yes, sign me out", re.I)).click()
    page.wait_for_url(gateway.url + "/console/")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(re.escape(issuer)))
    expect(page.locator("input[name=login]")).to_be_visible()
