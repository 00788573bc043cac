"""The worker's credential (finetune/publish.py's `Credentials`): a token file read at each use,
or the client-credentials grant against an issuer on a real socket, its token kept until a
minute before it expires; an issuer that fails is a NotServable that names no secret."""

import base64
import http.server
import json
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from finetune.publish import Credentials, NotServable
from harness.servers import free_port


class _Issuer:
    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, list[str]]]] = []  # (Authorization, form)
        self.answer: dict[str, object] = {"access_token": "token-1", "token_type": "Bearer", "expires_in": 3600}
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/oauth/token"


@pytest.fixture
def issuer() -> Iterator[_Issuer]:
    state = _Issuer()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            form = urllib.parse.parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
            state.requests.append((self.headers.get("Authorization", ""), form))
            body = json.dumps(state.answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", state.port), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


async def test_a_token_file_is_read_at_each_use(tmp_path: Path) -> None:
    path = tmp_path / "token"
    credentials = Credentials(token_file=path)
    assert await credentials.headers() == {}  # not written yet
    path.write_text("first\n")
    assert await credentials.headers() == {"Authorization": "Bearer first"}
    path.write_text("renewed")
    assert await credentials.headers() == {"Authorization": "Bearer renewed"}


async def test_client_credentials_are_asked_once_and_kept(issuer: _Issuer) -> None:
    credentials = Credentials(token_url=issuer.url, client_id="finetune-worker", client_secret="s3cret")
    assert await credentials.headers() == {"Authorization": "Bearer token-1"}
    assert await credentials.headers() == {"Authorization": "Bearer token-1"}
    [(authorization, form)] = issuer.requests
    assert authorization == "Basic " + base64.b64encode(b"finetune-worker:s3cret").decode()
    assert form == {"grant_type": ["client_credentials"], "scope": ["chat admin adapters"]}


async def test_a_token_about_to_expire_is_renewed(issuer: _Issuer) -> None:
    issuer.answer["expires_in"] = 30  # under the minute kept in hand
    credentials = Credentials(token_url=issuer.url, client_id="w", client_secret="s")
    await credentials.headers()
    issuer.answer["access_token"] = "token-2"
    assert await credentials.headers() == {"Authorization": "Bearer token-2"}
    assert len(issuer.requests) == 2


async def test_an_issuer_that_answers_no_token_is_not_servable_and_names_no_secret(issuer: _Issuer) -> None:
    issuer.answer = {"error": "invalid_client"}
    credentials = Credentials(token_url=issuer.url, client_id="w", client_secret="s3cret")
    with pytest.raises(NotServable) as refused:
        await credentials.headers()
    assert refused.value.reason == "the worker could not get a token"
    assert "s3cret" not in str(refused.value)
