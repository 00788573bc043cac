"""`python -m app.auth` (app/auth/__main__.py): a token it prints is one the gateway it was
made for takes."""

import os

import pytest

from app.auth.__main__ import main
from tests.unit.app.auth.conftest import ISSUER, Gateway


async def test_the_cli_prints_a_token_the_gateway_takes(
    issuing: Gateway, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [name for name in os.environ if name.startswith("SWITCHYARD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SWITCHYARD_DATA_DIR", str(issuing.settings.data_dir))
    monkeypatch.setenv("SWITCHYARD_AUTH_ISSUER", ISSUER)
    main(["token", "--scope", "chat", "--subject", "carol"])
    token = capsys.readouterr().out.strip()
    assert (await issuing.chat(token)).status_code == 200
