"""The gateway's command line (app/server.py): settings that cannot be served are refused
before anything starts, with status 2."""

import os

import pytest

from app.server import parse_args


def test_disabled_authentication_is_refused_off_loopback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [name for name in os.environ if name.startswith("SWITCHYARD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SWITCHYARD_AUTH_MODE", "disabled")
    with pytest.raises(SystemExit) as exited:
        parse_args(["--host", "0.0.0.0", "--port", "8000"])
    assert exited.value.code == 2
    assert "auth_mode disabled is refused unless host is a loopback address" in capsys.readouterr().err
