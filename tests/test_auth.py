"""OAuth2 through a real gateway in `builtin` mode (and one in `external` mode against a JWKS
server that counts its fetches): the token endpoint, the OpenAI SDK with a token, scopes,
key rotation, and a JWT attack suite where every case has its exact status, never a 5xx."""

import asyncio
import base64
import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from app.auth.secrets import hash_secret
from harness.servers import ROOT, ServerProcess, free_port

MODEL = "counting"
AUDIENCE = "switchyard"
SECRETS = {"svc": "svc-secret", "ops": "ops-secret", "tuner": "tuner-secret"}
SCOPES = {"svc": ["chat"], "ops": ["chat", "admin"], "tuner": ["finetune"]}
CHALLENGE = 'Bearer realm="switchyard"'


class _Jwks:
    """A JWKS endpoint that counts its fetches (another issuer's, for the external mode)."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {"keys": []}
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps(outer.document).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def auth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("auth-data")


def _gateway_env(counting_engine: ServerProcess, data_dir: Path, **extra: str) -> dict[str, str]:
    clients = [{"client_id": c, "secret_hash": hash_secret(s), "scopes": SCOPES[c]} for c, s in SECRETS.items()]
    return {
        "SWITCHYARD_POOLS": json.dumps([{"name": "p", "replicas": [counting_engine.url]}]),
        "SWITCHYARD_DATA_DIR": str(data_dir),
        "SWITCHYARD_AUTH_MODE": "builtin",
        "SWITCHYARD_AUTH_CLIENTS": json.dumps(clients),
        **extra,
    }


@pytest.fixture(scope="module")
def gateway(counting_engine: ServerProcess, auth_dir: Path, log_dir: Path) -> Iterator[ServerProcess]:
    port = free_port()
    env = _gateway_env(counting_engine, auth_dir, SWITCHYARD_AUTH_ISSUER="https://issuer.test")
    server = ServerProcess("app", ["--port", str(port)], port=port, log_dir=log_dir, env=env, ready_path="/ready")
    yield server.wait_ready()
    server.stop()


@pytest.fixture(scope="module")
def jwks() -> Iterator[_Jwks]:
    served = _Jwks()
    yield served
    served.server.shutdown()
    served.server.server_close()


@pytest.fixture(scope="module")
def external(
    counting_engine: ServerProcess, jwks: _Jwks, gateway: ServerProcess, log_dir: Path
) -> Iterator[ServerProcess]:
    """A second gateway that trusts the first one's keys through a JWKS URL."""
    jwks.document = httpx.get(gateway.url + "/.well-known/jwks.json").json()
    port = free_port()
    env = {
        "SWITCHYARD_POOLS": json.dumps([{"name": "p", "replicas": [counting_engine.url]}]),
        "SWITCHYARD_AUTH_MODE": "external",
        "SWITCHYARD_AUTH_ISSUER": "https://issuer.test",
        "SWITCHYARD_AUTH_JWKS": jwks.url,
    }
    server = ServerProcess("app", ["--port", str(port)], port=port, log_dir=log_dir, env=env, ready_path="/ready")
    yield server.wait_ready()
    server.stop()


def _token_from_endpoint(gateway: ServerProcess, client: str, **form: str) -> httpx.Response:
    return httpx.post(
        gateway.url + "/oauth/token",
        data={"grant_type": "client_credentials", **form},
        auth=(client, SECRETS[client]),
    )


def _signing_key(auth_dir: Path) -> ECKey:
    entry = json.loads((auth_dir / "auth" / "signing-keys.json").read_text())["keys"][-1]
    return ECKey.import_key({k: v for k, v in entry.items() if k != "created_at"})


def _claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": "https://issuer.test", "sub": "alice", "aud": AUDIENCE, "exp": now + 600, "iat": now}
    claims |= {"scope": "chat", "client_id": "alice", "jti": "j1"}
    for name, value in changes.items():
        if value is None:
            claims.pop(name, None)
        elif isinstance(value, _FromNow):
            claims[name] = now + value.seconds
        else:
            claims[name] = value
    return claims


@dataclass(frozen=True)
class _FromNow:
    """A time claim relative to when the token is made (parameters are made at collection)."""

    seconds: int


def _sign(key: ECKey | RSAKey, claims: dict[str, Any], **header: Any) -> str:
    alg = "ES256" if isinstance(key, ECKey) else "RS256"
    full = {"alg": alg, "typ": "at+jwt", "kid": key.kid} | header
    full = {k: v for k, v in full.items() if v is not None}
    return jwt.encode(full, claims, key, algorithms=[full["alg"]])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}.{_b64(signature)}"


def _chat(gateway: ServerProcess, token: str | None, **headers: str) -> httpx.Response:
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=30)


def _refused(response: httpx.Response) -> str:
    """The 401's error code, with the envelope and challenge checked."""
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith(CHALLENGE)
    if error["code"] == "invalid_token":
        assert 'error="invalid_token"' in challenge
    code: str = error["code"]
    return code


# the token endpoint and the SDK


def test_the_token_endpoint_issues_an_at_jwt_the_sdk_can_use(gateway: ServerProcess) -> None:
    response = _token_from_endpoint(gateway, "svc")
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    answer = response.json()
    assert answer["token_type"] == "Bearer"
    assert answer["expires_in"] == 3600
    header = json.loads(base64.urlsafe_b64decode(answer["access_token"].split(".")[0] + "=="))
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "ES256"

    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=answer["access_token"], max_retries=0) as client:
        completion = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert completion.choices[0].message.content
        assert [m.id for m in client.models.list()] == [MODEL]


def test_the_sdk_raises_its_own_errors_for_401_and_403(gateway: ServerProcess) -> None:
    tuner = _token_from_endpoint(gateway, "tuner").json()["access_token"]
    for api_key, error in (("not-a-jwt", openai.AuthenticationError), (tuner, openai.PermissionDeniedError)):
        with (
            openai.OpenAI(base_url=gateway.url + "/v1", api_key=api_key, max_retries=0) as client,
            pytest.raises(error),
        ):
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    ("client", "secret", "form", "status", "error"),
    [
        ("svc", "wrong", {"grant_type": "client_credentials"}, 401, "invalid_client"),
        ("nobody", "x", {"grant_type": "client_credentials"}, 401, "invalid_client"),
        ("svc", "svc-secret", {"grant_type": "password"}, 400, "unsupported_grant_type"),
        ("svc", "svc-secret", {"grant_type": "client_credentials", "scope": "admin"}, 400, "invalid_scope"),
        ("svc", "svc-secret", {"scope": "chat"}, 400, "unsupported_grant_type"),
    ],
)
def test_token_endpoint_errors_are_rfc_6749(
    gateway: ServerProcess, client: str, secret: str, form: dict[str, str], status: int, error: str
) -> None:
    response = httpx.post(gateway.url + "/oauth/token", data=form, auth=(client, secret))
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    assert response.headers["cache-control"] == "no-store"


def test_secrets_in_the_body_are_not_accepted(gateway: ServerProcess) -> None:
    form = {"grant_type": "client_credentials", "client_id": "svc", "client_secret": SECRETS["svc"]}
    response = httpx.post(gateway.url + "/oauth/token", data=form)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_metadata_and_jwks_are_published(gateway: ServerProcess) -> None:
    metadata = httpx.get(gateway.url + "/.well-known/oauth-authorization-server").json()
    assert metadata["issuer"] == "https://issuer.test"
    assert metadata["grant_types_supported"] == ["client_credentials"]
    assert metadata["token_endpoint_auth_methods_supported"] == ["client_secret_basic"]
    keys = httpx.get(gateway.url + "/.well-known/jwks.json").json()["keys"]
    assert keys
    assert all(set(key) >= {"kty", "kid", "crv", "x", "y"} and "d" not in key for key in keys)


def test_the_key_is_kept_private_on_disk(gateway: ServerProcess, auth_dir: Path) -> None:
    assert (auth_dir / "auth").stat().st_mode & 0o777 == 0o700
    assert (auth_dir / "auth" / "signing-keys.json").stat().st_mode & 0o777 == 0o600


# scopes and tenants


def test_scopes_per_route(gateway: ServerProcess) -> None:
    svc = _token_from_endpoint(gateway, "svc").json()["access_token"]
    ops = _token_from_endpoint(gateway, "ops").json()["access_token"]
    headers = {"authorization": f"Bearer {svc}"}
    refused = httpx.get(gateway.url + "/admin/pools", headers=headers)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "insufficient_scope"
    assert refused.headers["www-authenticate"] == 'Bearer realm="switchyard", error="insufficient_scope", scope="admin"'
    assert httpx.get(gateway.url + "/status", headers=headers).status_code == 403
    assert httpx.get(gateway.url + "/admin/pools", headers={"authorization": f"Bearer {ops}"}).status_code == 200
    assert httpx.get(gateway.url + "/health").status_code == 200  # probes need no token


def test_idempotency_keys_are_the_token_subjects_own(gateway: ServerProcess, auth_dir: Path) -> None:
    key = _signing_key(auth_dir)
    alice, bob = _sign(key, _claims(sub="alice")), _sign(key, _claims(sub="bob"))
    first = _chat(gateway, alice, **{"idempotency-key": "same-key"})
    again = _chat(gateway, alice, **{"idempotency-key": "same-key"})
    other = _chat(gateway, bob, **{"idempotency-key": "same-key"})
    assert first.status_code == again.status_code == other.status_code == 200
    assert again.headers.get("idempotent-replayed") == "true"
    assert "idempotent-replayed" not in other.headers  # bob's key is bob's: executed, not replayed


# the attack suite: each case's exact answer


def test_no_credentials_get_a_bare_challenge(gateway: ServerProcess) -> None:
    response = _chat(gateway, None)
    assert _refused(response) == "missing_token"
    assert response.headers["www-authenticate"] == CHALLENGE
    assert _refused(_chat(gateway, None, authorization="Basic c3ZjOnN2Yy1zZWNyZXQ=")) == "missing_token"


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_in_every_spelling(gateway: ServerProcess, alg: str) -> None:
    for signature in (b"", b"x"):
        token = _unsigned({"alg": alg, "typ": "at+jwt"}, _claims(), signature)
        assert _refused(_chat(gateway, token)) == "invalid_token"


def test_hs256_signed_with_the_public_key_as_secret(gateway: ServerProcess, auth_dir: Path) -> None:
    public = _signing_key(auth_dir)
    for secret in (public.as_pem(private=False), json.dumps(public.as_dict(private=False)).encode()):
        header = {"alg": "HS256", "typ": "at+jwt", "kid": public.kid}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(_claims()).encode())}"
        signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        assert _refused(_chat(gateway, f"{signing_input}.{_b64(signature)}")) == "invalid_token"


def test_a_key_we_do_not_know(gateway: ServerProcess, auth_dir: Path) -> None:
    stranger = ECKey.generate_key("P-256", private=True)
    assert _refused(_chat(gateway, _sign(stranger, _claims(), kid="stranger"))) == "invalid_token"
    # Our kid on a stranger's signature, and a stranger's key offered in the header itself.
    ours = _signing_key(auth_dir).kid
    forged = _sign(stranger, _claims(), kid=ours, jwk=stranger.as_dict(private=False))
    assert _refused(_chat(gateway, forged)) == "invalid_token"


@pytest.mark.parametrize("kid", ["../../../../etc/passwd", "x' OR '1'='1", "k" * 300, 7, {"$ne": ""}, ["a"]])
def test_kid_injection(gateway: ServerProcess, kid: object) -> None:
    token = _unsigned({"alg": "ES256", "typ": "at+jwt", "kid": kid}, _claims(), b"s" * 64)
    assert _refused(_chat(gateway, token)) == "invalid_token"


def test_jku_and_x5u_are_never_fetched(gateway: ServerProcess, jwks: _Jwks) -> None:
    stranger = ECKey.generate_key("P-256", private=True)
    stranger.ensure_kid()
    before = jwks.fetches
    jwks.document = {"keys": [stranger.as_dict(private=False)]}
    for header in ({"jku": jwks.url}, {"x5u": jwks.url}):
        assert _refused(_chat(gateway, _sign(stranger, _claims(), **header))) == "invalid_token"
    assert jwks.fetches == before


@pytest.mark.parametrize("typ", [None, "JWT", "jwt", "at+JWS", "id+jwt"])
def test_typ_must_be_at_jwt(gateway: ServerProcess, auth_dir: Path, typ: str | None) -> None:
    key = _signing_key(auth_dir)
    full = {"alg": "ES256", "kid": key.kid} | ({"typ": typ} if typ else {})
    token = jwt.encode(full, _claims(), key, algorithms=["ES256"], default_type=None)
    assert _refused(_chat(gateway, token)) == "invalid_token"


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt"])
def test_typ_spellings_of_at_jwt_pass(gateway: ServerProcess, auth_dir: Path, typ: str) -> None:
    assert _chat(gateway, _sign(_signing_key(auth_dir), _claims(), typ=typ)).status_code == 200


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({"aud": "someone-else"}, 401),
        ({"aud": ["someone-else", AUDIENCE]}, 200),
        ({"aud": None}, 401),
        ({"iss": "https://evil.test"}, 401),
        ({"iss": ["https://issuer.test"]}, 401),  # a list holding the issuer is not the issuer
        ({"iss": None}, 401),
        ({"exp": _FromNow(-120)}, 401),  # expired beyond the 30 s leeway
        ({"exp": _FromNow(-10)}, 200),  # within it
        ({"nbf": _FromNow(10)}, 200),  # not before: inside the leeway
        ({"nbf": _FromNow(120)}, 401),  # outside it
        ({"nbf": "soon"}, 401),
        ({"exp": None}, 401),
        ({"exp": "tomorrow"}, 401),
        ({"exp": 10**400}, 401),
        ({"sub": None}, 401),
        ({"sub": ""}, 401),
        ({"scope": "finetune"}, 403),
        ({"scope": ["chat"]}, 200),
    ],
)
def test_claims(gateway: ServerProcess, auth_dir: Path, changes: dict[str, Any], status: int) -> None:
    response = _chat(gateway, _sign(_signing_key(auth_dir), _claims(**changes)))
    assert response.status_code == status, response.text


@pytest.mark.parametrize(
    "token",
    [
        "abc",
        "a.b",
        "a.b.c",
        "..",
        "e30.e30.",  # empty signature segment
        f"{_b64(b'[1]')}.{_b64(b'{}')}.c2ln",  # header not an object
        f"{_b64(b'not json')}.{_b64(b'{}')}.c2ln",
        "Zm9v!.YmFy.YmF6",  # not base64url
        "a.b.c.d.e",  # JWE-shaped
        "x" * 9000,  # oversized
    ],
)
def test_malformed_tokens(gateway: ServerProcess, token: str) -> None:
    assert _refused(_chat(gateway, token)) == "invalid_token"


def test_a_header_nested_1500_deep_is_a_401_and_logs_no_traceback(gateway: ServerProcess) -> None:
    """It raised RecursionError out of the header parser: a 500 and a traceback per request."""
    for document in (b"[" * 1500 + b"]" * 1500, b'{"":' * 1500 + b"1" + b"}" * 1500):
        token = f"{_b64(document)}.{_b64(json.dumps(_claims()).encode())}.c2ln"
        assert _refused(_chat(gateway, token)) == "invalid_token"
    assert "Traceback" not in gateway.log_path.read_text(errors="replace")


def test_two_authorization_headers_are_refused(gateway: ServerProcess, auth_dir: Path) -> None:
    """Ambiguous credentials (a proxy may have read the other one): 400, whichever they are."""
    token = _sign(_signing_key(auth_dir), _claims())
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for second in (f"Bearer {token}", "Bearer forged", "Basic c3ZjOnN2Yy1zZWNyZXQ="):
        headers = [("authorization", f"Bearer {token}"), ("authorization", second)]
        for response in (
            httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=30),
            httpx.get(gateway.url + "/v1/models", headers=headers),
            httpx.get(gateway.url + "/admin/pools", headers=headers),
        ):
            assert response.status_code == 400, response.text
            assert response.json()["error"]["code"] == "invalid_request"
            assert response.json()["error"]["param"] == "Authorization"
            assert response.headers["www-authenticate"] == 'Bearer realm="switchyard", error="invalid_request"'
    assert _chat(gateway, token).status_code == 200  # the same token, sent once
    basic = ("authorization", "Basic " + base64.b64encode(f"svc:{SECRETS['svc']}".encode()).decode())
    form = {"grant_type": "client_credentials"}
    response = httpx.post(gateway.url + "/oauth/token", data=form, headers=[basic, basic])
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"


@pytest.mark.parametrize(
    "authorization",
    [
        b"Basic " + base64.b64encode(b"\xff\xfe:svc-secret"),  # an id that is not UTF-8
        b"Basic " + base64.b64encode(b"svc:\xc3\x28"),  # a secret that is not
        b"Basic \xff\xfe\x80\x81",  # raw bytes where base64 belongs
        b"Basic " + base64.b64encode(b"svc"),  # no colon
    ],
)
def test_malformed_basic_credentials_are_invalid_client(gateway: ServerProcess, authorization: bytes) -> None:
    headers = [(b"authorization", authorization), (b"content-type", b"application/x-www-form-urlencoded")]
    response = httpx.post(gateway.url + "/oauth/token", content=b"grant_type=client_credentials", headers=headers)
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"].startswith("Basic ")
    assert "Traceback" not in gateway.log_path.read_text(errors="replace")


def test_a_signature_over_other_claims(gateway: ServerProcess, auth_dir: Path) -> None:
    header, _, signature = _sign(_signing_key(auth_dir), _claims()).split(".")
    tampered = f"{header}.{_b64(json.dumps(_claims(sub='root', scope='chat admin')).encode())}.{signature}"
    assert _refused(_chat(gateway, tampered)) == "invalid_token"


def test_key_rotation_keeps_old_tokens_valid(gateway: ServerProcess, auth_dir: Path) -> None:
    old = _signing_key(auth_dir)
    old_token = _sign(old, _claims())
    command = [sys.executable, "-m", "app.auth", "rotate-key"]
    env = {"SWITCHYARD_DATA_DIR": str(auth_dir), "SWITCHYARD_AUTH_ISSUER": "https://issuer.test", "PATH": ""}
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
    new = _signing_key(auth_dir)
    assert new.kid != old.kid
    assert _chat(gateway, _sign(new, _claims())).status_code == 200  # an unknown kid makes it read the file again
    assert _chat(gateway, old_token).status_code == 200
    kids = {key["kid"] for key in httpx.get(gateway.url + "/.well-known/jwks.json").json()["keys"]}
    assert kids == {old.kid, new.kid}
    time.sleep(2.1)  # the issuer looks at the key file every 2 s
    issued = _token_from_endpoint(gateway, "svc").json()["access_token"]
    assert json.loads(base64.urlsafe_b64decode(issued.split(".")[0] + "=="))["kid"] == new.kid


def test_the_cli_prints_a_token_the_gateway_takes(gateway: ServerProcess, auth_dir: Path) -> None:
    command = [sys.executable, "-m", "app.auth", "token", "--scope", "chat", "--subject", "carol"]
    env = {"SWITCHYARD_DATA_DIR": str(auth_dir), "SWITCHYARD_AUTH_ISSUER": "https://issuer.test", "PATH": ""}
    token = subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, text=True).stdout.strip()
    assert _chat(gateway, token).status_code == 200


# the external mode


def test_external_issuer_tokens_and_a_flood_of_unknown_kids(
    external: ServerProcess, jwks: _Jwks, auth_dir: Path
) -> None:
    jwks.document = {"keys": [_signing_key(auth_dir).as_dict(private=False)]}
    assert _chat(external, _sign(_signing_key(auth_dir), _claims())).status_code == 200
    before = jwks.fetches
    stranger = ECKey.generate_key("P-256", private=True)
    for i in range(40):
        assert _refused(_chat(external, _sign(stranger, _claims(), kid=f"made-up-{i}"))) == "invalid_token"
    assert jwks.fetches - before <= 1  # one refetch per 30 s, whatever the flood


def test_disabled_authentication_is_refused_off_loopback(log_dir: Path) -> None:
    env = {"SWITCHYARD_AUTH_MODE": "disabled", "PATH": ""}
    run = subprocess.run(
        [sys.executable, "-m", "app", "--host", "0.0.0.0", "--port", str(free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "auth_mode disabled is refused unless host is a loopback address" in run.stderr


def test_the_token_endpoint_slows_down_a_flood(gateway: ServerProcess) -> None:
    async def flood() -> list[httpx.Response]:
        """All at once: one after the other, a loaded machine's scrypt alone paces them under the rate."""
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
            form = {"grant_type": "client_credentials"}
            return await asyncio.gather(
                *(client.post("/oauth/token", data=form, auth=("svc", "guess")) for _ in range(40))
            )

    answers = asyncio.run(flood())
    statuses = {answer.status_code for answer in answers}
    assert statuses == {401, 429}
    slowed = next(answer for answer in answers if answer.status_code == 429)
    assert slowed.json()["error"] == "slow_down"
    assert int(slowed.headers["retry-after"]) >= 1
