"""The sidecar's every error is the OpenAI envelope, in process: an unknown path, a wrong
method, a body that is not JSON or has the wrong types, a refused credential and an
HTTPException from a dependency are 4xx, never FastAPI's `{"detail": ...}`; a ValueError
(or KeyError) that a bug raises in a collaborator is a 500, never taken for the client's
fault. The framework's own refusals (404, 405, a declared parameter), a client that left (499,
not logged) and a bug in a route (500, logged once) are in the envelope too."""

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from starlette.requests import ClientDisconnect

from harness.fake_nodes import FakeIssuer
from sync import adapters, crdt
from sync.auth import SidecarAuth
from sync.clock import Timestamp
from sync.crdt import FileRef, State, Version
from tests.unit.sync.hostile import Answer, peer_headers, refusal

DIGEST = "0" * 64


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder to publish: what is in it never matters here, a collaborator fails first."""
    folder = tmp_path_factory.mktemp("errors-adapter")
    (folder / "adapter_config.json").write_text("{}")
    return folder


def _writer(issuer: FakeIssuer) -> dict[str, str]:
    return issuer.headers("adapters") | {"content-type": "application/json"}


def _envelope(response: Answer, status: int) -> dict[str, Any]:
    """The error of an answer that must be `status` in the OpenAI envelope, and nothing else."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}, body  # never FastAPI's {"detail": ...}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str)
    assert error["message"]
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
    return error


def _delta_with_a_version() -> bytes:
    files = (FileRef("adapter_config.json", 2, "1" * 64),)
    version = Version(crdt.manifest_digest(files), "switchyard-tiny-v1", 4, files, Timestamp(1, 0, "b"))
    delta = crdt.publish(State(), "errors", version, 1.0, "b", Timestamp(1, 0, "b"))
    return json.dumps(crdt.encode(delta)).encode()


def test_an_unknown_path_is_a_404_in_the_envelope(client: TestClient) -> None:
    for path in ("/nowhere", "/adapters/a/b/c/d", "/sync", "/blobs/", "/v1/chat/completions"):
        assert _envelope(client.get(path), 404)["code"] == "not_found"


@pytest.mark.parametrize(
    ("method", "path"),
    [("DELETE", "/health"), ("POST", "/metrics"), ("PATCH", "/adapters"), ("PUT", "/adapters/x"),
     ("GET", "/sync/summary"), ("POST", "/blobs/" + DIGEST), ("POST", "/adapters/x/audit")],
)  # fmt: skip
def test_a_method_a_route_does_not_take_is_a_405_in_the_envelope(client: TestClient, method: str, path: str) -> None:
    response = client.request(method, path)
    assert _envelope(response, 405)["code"] == "method_not_allowed"
    assert response.headers["allow"]


@pytest.mark.parametrize("body", [b"{", b"\xff\xfe", b"NaN", b"[" * 5_000 + b"]" * 5_000, b"1" * 40, b""])
@pytest.mark.parametrize("path", ["/sync/delta", "/sync/summary", "/adapters"])
def test_a_body_that_is_not_json_is_a_400_in_the_envelope(
    client: TestClient, issuer: FakeIssuer, path: str, body: bytes
) -> None:
    headers = _writer(issuer) if path == "/adapters" else peer_headers(issuer)
    assert _envelope(client.post(path, content=body, headers=headers), 400)["code"] == "invalid_request"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/adapters", {"name": 5, "path": "/x"}, "name"),
        ("/adapters", {"name": "a", "path": "/x", "weight": "heavy"}, "weight"),
        ("/adapters", {"name": "a", "path": ["/x"]}, "path"),
        ("/adapters", {"name": "a", "path": "/x", "extra": 1}, "extra"),
        ("/adapters", [], None),
        ("/sync/summary", {"summary": ["a"]}, "summary"),
        ("/sync/summary", {"summary": {"00": 1}}, "summary"),
        ("/sync/delta", {"entries": [], "dots": {}}, None),
        ("/sync/delta", {"entries": {}, "dots": {"a": "1"}}, None),
        ("/sync/delta", "state", None),
    ],
)
def test_wrong_types_are_a_400_in_the_envelope(
    client: TestClient, issuer: FakeIssuer, path: str, body: Any, param: str | None
) -> None:
    headers = _writer(issuer) if path == "/adapters" else peer_headers(issuer)
    error = _envelope(client.post(path, json=body, headers=headers), 400)
    assert error["param"] == param


def test_an_upload_whose_weight_is_not_a_number_is_a_400_naming_it(client: TestClient, issuer: FakeIssuer) -> None:
    headers = issuer.headers("adapters") | {"content-type": "application/x-tar"}
    response = client.post("/adapters?name=a&weight=heavy", content=b"", headers=headers)
    assert _envelope(response, 400)["param"] == "weight"


def test_a_digest_that_is_not_one_is_a_400_naming_it(client: TestClient, issuer: FakeIssuer) -> None:
    error = _envelope(client.get("/blobs/not-a-digest", headers=peer_headers(issuer)), 400)
    assert (error["code"], error["param"]) == ("invalid_digest", "digest")


def test_a_refused_credential_is_a_4xx_in_the_envelope_with_its_challenge(
    client: TestClient, issuer: FakeIssuer
) -> None:
    body = {"name": "a", "path": "/x"}
    missing = client.post("/adapters", json=body)
    assert _envelope(missing, 401)["code"] == "missing_token"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    token = issuer.headers("adapters")["authorization"]
    twice = client.post("/adapters", json=body, headers=[("authorization", token), ("authorization", token)])
    assert _envelope(twice, 400)["param"] == "Authorization"
    assert _envelope(client.post("/adapters", json=body, headers=issuer.headers("chat")), 403)["code"]
    wrong_key = client.post("/sync/delta", json={}, headers={"authorization": "Bearer wrong"})
    assert _envelope(wrong_key, 401)["code"] == "invalid_peer_key"


def test_an_http_exception_from_a_dependency_is_in_the_envelope(
    client: TestClient, issuer: FakeIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def teapot(self: SidecarAuth, request: object) -> NoReturn:
        raise HTTPException(418, "a dependency's refusal")

    monkeypatch.setattr(SidecarAuth, "peer", teapot)
    error = _envelope(client.post("/sync/summary", json={"summary": {}}, headers=peer_headers(issuer)), 418)
    assert error["message"] == "a dependency's refusal"


def _raiser(error: Exception) -> Callable[..., NoReturn]:
    def fail(*args: object, **kwargs: object) -> NoReturn:
        raise error

    return fail


# Each: what to break (the app and the folder to publish -> (object, attribute)), the request.
BUGS: dict[str, tuple[Callable[[FastAPI], tuple[object, str]], str, str, str]] = {
    "decoding a delta": (lambda app: (crdt, "manifest_digest"), "POST", "/sync/delta", "delta"),
    "joining a delta": (lambda app: (app.state.node, "receive"), "POST", "/sync/delta", "empty"),
    "comparing digests": (lambda app: (app.state.node, "differing"), "POST", "/sync/summary", "summary"),
    "finding a blob": (lambda app: (app.state.node.blobs, "path"), "GET", "/blobs/" + DIGEST, "peer"),
    "checking the peer key": (lambda app: (SidecarAuth, "peer"), "POST", "/sync/summary", "summary"),
    "reading an adapter": (lambda app: (adapters, "read_adapter"), "POST", "/adapters", "publish"),
    "the engines' base models": (lambda app: (app.state.reconciler, "base_models"), "POST", "/adapters", "publish"),
    "the audit log": (lambda app: (crdt, "audit"), "GET", "/adapters/a/audit", "none"),
    "revoking": (lambda app: (app.state.node, "revoke"), "DELETE", f"/adapters/a/versions/{DIGEST}", "writer"),
    "retiring": (lambda app: (app.state.node, "retire"), "DELETE", "/adapters/a", "writer"),
}


@pytest.mark.parametrize(
    "error", [ValueError("a bug's message"), KeyError("a bug's key")], ids=lambda error: type(error).__name__
)
@pytest.mark.parametrize("where", sorted(BUGS))
def test_a_bug_in_a_collaborator_is_a_500_never_the_clients_fault(
    app: FastAPI,
    client: TestClient,
    issuer: FakeIssuer,
    folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    where: str,
    error: Exception,
) -> None:
    target, method, path, kind = BUGS[where]
    requests: dict[str, dict[str, Any]] = {
        "delta": {"content": _delta_with_a_version(), "headers": peer_headers(issuer)},
        "empty": {"json": {"entries": {}, "dots": {}}, "headers": peer_headers(issuer)},
        "summary": {"json": {"summary": {}}, "headers": peer_headers(issuer)},
        "peer": {"headers": peer_headers(issuer)},
        "publish": {"json": {"name": "a", "path": str(folder)}, "headers": _writer(issuer)},
        "writer": {"headers": _writer(issuer)},
        "none": {},
    }
    monkeypatch.setattr(*target(app), _raiser(error))
    with caplog.at_level(logging.ERROR):
        response = client.request(method, path, **requests[kind])
    assert _envelope(response, 500) == {
        "message": f"The sync sidecar had an internal error ({type(error).__name__}).",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }
    assert "a bug's" not in response.text  # its details are in the log, not in the answer
    [logged] = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert logged.exc_info is not None


def test_the_frameworks_own_errors_and_a_bug_are_answered_in_the_envelope(
    app: FastAPI, client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    missing = refusal(client.get("/no/such/route"))
    assert (client.get("/no/such/route").status_code, missing["code"]) == (404, "not_found")
    for method, path in (("PUT", "/adapters"), ("GET", "/sync/delta"), ("POST", "/health"), ("DELETE", "/blobs/x")):
        response = client.request(method, path)
        assert (response.status_code, refusal(response)["code"]) == (405, "method_not_allowed")
        assert response.headers["allow"]

    def fake_typed_route(count: int) -> dict[str, int]:  # a route with a declared parameter, which none has yet
        return {"count": count}

    def fake_buggy_route() -> None:
        raise KeyError("secret-internal-detail")

    def fake_abandoned_route() -> None:
        raise ClientDisconnect  # what reading the body raises once the caller has gone

    app.get("/fake-typed")(fake_typed_route)
    app.get("/fake-bug")(fake_buggy_route)
    app.get("/fake-abandoned")(fake_abandoned_route)
    invalid = client.get("/fake-typed", params={"count": "many"})
    assert invalid.status_code == 400
    assert refusal(invalid)["param"] == "count"
    assert "count" in invalid.json()["error"]["message"]
    assert refusal(client.get("/fake-typed"))["param"] == "count"

    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert client.get("/fake-abandoned").status_code == 499  # nobody reads it; not a fault, not logged
        bug = client.get("/fake-bug")  # the client raises if the exception escapes the app
    assert bug.status_code == 500
    assert bug.json()["error"] == {
        "message": "The sync sidecar had an internal error (KeyError).",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert errors[0].exc_info is not None
    assert "/fake-bug" in errors[0].getMessage()
    assert client.get("/health").status_code == 200
