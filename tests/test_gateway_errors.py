"""The gateway's last line: a bug is one 500 in the envelope and one traceback in the log, and a
FastAPI route's validation error names its param, in process (no engine needed)."""

import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.factory import create_app
from app.settings import GatewaySettings


def _app(tmp_path: Path) -> TestClient:
    settings = GatewaySettings.model_validate(
        {
            "pools": [{"name": "p", "replicas": ["http://127.0.0.1:9"]}],
            "auth_mode": "disabled",
            "data_dir": str(tmp_path),
        }
    )
    app = create_app(settings)

    async def fake_bug() -> None:  # a fake route, for the test only: a bug in a handler
        raise KeyError("secret detail")

    async def fake_validated(count: int) -> int:  # a fake route, for the test only: a typed parameter
        return count

    app.add_api_route("/fake-bug", fake_bug)
    app.add_api_route("/fake-validated", fake_validated)
    return TestClient(app, raise_server_exceptions=False)


def test_a_bug_is_one_500_in_the_envelope_and_one_traceback(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with _app(tmp_path) as client, caplog.at_level(logging.ERROR):
        answer = client.get("/fake-bug")
    assert answer.status_code == 500
    assert answer.json() == {
        "error": {"message": "The gateway had an internal error.", "type": "server_error", "param": None, "code": None}
    }
    assert "secret detail" not in answer.text
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1, caplog.records
    assert "/fake-bug" in tracebacks[0].getMessage()


def test_a_routes_validation_error_names_its_param(tmp_path: Path) -> None:
    with _app(tmp_path) as client:
        answer = client.get("/fake-validated", params={"count": "many"})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "count")
    assert error["message"].startswith("Invalid value for 'count'")
