"""A real gateway on the embedded default, with the console built and two people who may
sign in, and Debian's Chromium driven by Playwright (no browser download)."""

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from app.auth.secrets import hash_secret
from harness.adapters import make_lora_adapter
from harness.servers import ROOT, ServerProcess, free_port

PASSWORDS = {"ada": "ada-console-password", "bob": "bob-console-password"}
SCOPES = {"ada": ["chat", "finetune", "adapters", "admin"], "bob": ["chat"]}
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the pages' screenshots go: docs/console when SWITCHYARD_CONSOLE_SCREENSHOTS names
    it (`make console-screenshots`), else a temporary folder."""
    named = os.environ.get("SWITCHYARD_CONSOLE_SCREENSHOTS")
    folder = Path(named) if named else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def console_gateway(
    builtin_model: Path, log_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The gateway, and its region's sync sidecar (trusting its tokens) behind /sync/adapters."""
    assert (ROOT / "console" / "dist" / "index.html").is_file(), "the console is not built: run `make console`"
    users = [{"username": u, "password_hash": hash_secret(p), "scopes": SCOPES[u]} for u, p in PASSWORDS.items()]
    port, sync_port = free_port(), free_port()
    sync_env = {"SWITCHYARD_DATA_DIR": str(tmp_path_factory.mktemp("console-sync")),
                "SWITCHYARD_SYNC_AUTH_ISSUER": f"http://127.0.0.1:{port}"}  # fmt: skip
    sidecar = ServerProcess("sync", ["--region", "local", "--port", str(sync_port)], port=sync_port,
                            log_dir=log_dir, env=sync_env).wait_ready()  # fmt: skip
    gateway_data = tmp_path_factory.mktemp("console-gateway")
    (gateway_data / "models").symlink_to(builtin_model.parent)  # the built-in model, already built
    env = {
        "SWITCHYARD_DATA_DIR": str(gateway_data),  # its own fine-tuning database and worker
        "SWITCHYARD_AUTH_MODE": "builtin",
        "SWITCHYARD_AUTH_USERS": json.dumps(users),
        "SWITCHYARD_HEALTH_INTERVAL_S": "0.5",
        "SWITCHYARD_SYNC_URL": sidecar.url,
    }
    gateway = ServerProcess("app", ["--port", str(port)], port=port, log_dir=log_dir, env=env).wait_ready()
    yield gateway
    gateway.stop()
    sidecar.stop()


@pytest.fixture(scope="module")
def adapter_files(builtin_model: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A LoRA adapter of the built-in model: the files of its folder, as a person picks them."""
    folder = make_lora_adapter(builtin_model, tmp_path_factory.mktemp("console-adapter") / "lora", rank=4)
    return sorted(path for path in folder.iterdir() if path.is_file())


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport=DESKTOP)  # type: ignore[arg-type]
    opened = context.new_page()
    opened.set_default_timeout(30_000)
    yield opened
    context.close()
