"""Property tests: reading credentials cannot crash, whatever the bytes.

The token verifier on arbitrary strings and on near-JWTs (random JSON headers, nesting
thousands deep, huge numbers, NaN, unicode, random base64, tokens our key really signed over
arbitrary payloads) only ever answers a principal or `oauth.InvalidToken`; the guard on
arbitrary header lists only a principal or a 400/401/403; and a gateway app, in process,
answers arbitrary `Authorization` headers, content types and bodies on `/oauth/token` and on
its guarded routes with a 4xx in the right shape (RFC 6749 §5.2 on the token endpoint, the
OpenAI envelope elsewhere), never a 5xx and never a logged traceback.
"""

import asyncio
import base64
import itertools
import json
import logging
import time
from collections.abc import Coroutine, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given, reject, settings
from hypothesis import strategies as st
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey
from starlette.datastructures import Headers

import oauth
from app.auth import Guard
from app.auth.secrets import hash_secret
from app.errors import GatewayError
from app.factory import create_app
from app.settings import GatewaySettings

ISSUER = "https://issuer.test"
AUDIENCE = "switchyard"
CLIENT, SECRET = "svc", "svc-secret"
KEY = ECKey.generate_key("P-256", private=True)
KEY.ensure_kid()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "scope": "chat", "iat": now, "exp": now + 3600}
    return claims | changes


def _signed(payload: bytes, **header: Any) -> str:
    """A compact JWS our key really signed: everything after the signature is still hostile."""
    return jws.serialize_compact({"alg": "ES256", "typ": "at+jwt", "kid": KEY.kid, **header}, payload, KEY)


VALID_TOKEN = jwt.encode({"alg": "ES256", "typ": "at+jwt", "kid": KEY.kid}, _claims(), KEY, algorithms=["ES256"])

# JSON as attackers write it: NaN and infinities (Python's json reads them), numbers past any
# float, unicode (lone surrogates included), nesting.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
header_members = st.fixed_dictionaries(
    {},
    optional={
        "alg": st.sampled_from(["ES256", "RS256", "none", "HS256", "EdDSA"]) | json_values,
        "typ": st.sampled_from(["at+jwt", "JWT", "application/at+jwt"]) | json_values,
        "kid": st.just(KEY.kid) | json_values,
        "crit": json_values,
        "jwk": json_values,
    },
)


@st.composite
def nested(draw: st.DrawFn) -> bytes:
    """A JSON document nested up to 5,000 deep (1,500 raised RecursionError out of json.loads)."""
    depth = draw(st.integers(min_value=1, max_value=5000))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    return (opener * depth + "1" + closer * depth).encode()


def _huge_number() -> st.SearchStrategy[bytes]:
    """Integers with more digits than `int()` converts (Python 3.11 raises ValueError past 4,300)."""
    return st.integers(min_value=4000, max_value=6000).map(lambda n: ('{"alg":"ES256","exp":' + "9" * n + "}").encode())


header_documents = (
    header_members.map(lambda header: json.dumps(header).encode())
    | nested()
    | _huge_number()
    | st.binary(max_size=64)
    | json_values.map(lambda value: json.dumps(value).encode())
)
segments = st.binary(max_size=96).map(_b64) | st.text(alphabet="AZaz09-_=+/!. \t\x00é", max_size=40) | st.just("")


@st.composite
def near_jwts(draw: st.DrawFn) -> str:
    header = _b64(draw(header_documents))
    parts = [header, draw(segments), draw(segments)]
    return ".".join(parts) if draw(st.booleans()) else ".".join(parts + draw(st.lists(segments, max_size=3)))


@st.composite
def signed_tokens(draw: st.DrawFn) -> str:
    """Signed by the trusted key over arbitrary claims (or arbitrary bytes, or deep nesting)."""
    payload = draw(
        st.dictionaries(st.sampled_from(["iss", "aud", "exp", "nbf", "sub", "scope", "client_id"]), json_values).map(
            lambda changes: json.dumps(_claims(**changes)).encode()
        )
        | nested()
        | st.binary(max_size=64)
    )
    extra = draw(st.dictionaries(st.sampled_from(["crit", "x5u", "jku", "cty"]), json_values, max_size=1))
    try:
        return _signed(payload, **extra)
    except (JoseError, ValueError, TypeError):  # joserfc refuses to sign some headers: not a token to try
        reject()


tokens = st.text(max_size=200) | near_jwts() | signed_tokens()


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as loop:
        yield loop


def _outcome(runner: asyncio.Runner, check: Coroutine[Any, Any, oauth.Principal | None]) -> object:
    """What `check` returned, or the exception it raised (any: the property is about which)."""
    try:
        return runner.run(check)
    except Exception as exc:
        return exc


def _verifier(max_token_bytes: int = 8192) -> oauth.TokenVerifier:
    keys = oauth.StaticKeys({"keys": [KEY.as_dict(private=False)]})
    return oauth.TokenVerifier(keys, issuer=ISSUER, audience=AUDIENCE, leeway_s=30, max_token_bytes=max_token_bytes)


# (a) the verifier


@settings(max_examples=300)
@given(token=tokens)
def test_the_verifier_answers_a_principal_or_invalid_token(runner: asyncio.Runner, token: str) -> None:
    outcome = _outcome(runner, _verifier().verify(token))
    if isinstance(outcome, oauth.Principal):
        assert isinstance(outcome.subject, str)
        assert outcome.subject
    else:
        assert isinstance(outcome, oauth.InvalidToken), repr(outcome)
        assert outcome.status == 401
        assert outcome.challenge("r").startswith('Bearer realm="r", error="invalid_token"')


@pytest.mark.parametrize("max_token_bytes", [8192, 1 << 20])  # the depth is bounded, not just the size
def test_a_header_nested_1500_deep_is_an_invalid_token(runner: asyncio.Runner, max_token_bytes: int) -> None:
    documents = [b"[" * 1500 + b"]" * 1500, b"[" * 5000 + b"]" * 5000, b'{"a":' * 1500 + b"1" + b"}" * 1500]
    verifier = _verifier(max_token_bytes=max_token_bytes)
    for document in documents:
        token = f"{_b64(document)}.{_b64(json.dumps(_claims()).encode())}.c2ln"
        with pytest.raises(oauth.InvalidToken):
            runner.run(verifier.verify(token))
    token = f"{_b64(documents[0])}.{_b64(json.dumps(_claims()).encode())}.c2ln"
    with pytest.raises(oauth.InvalidToken, match="nested too deeply"):
        runner.run(verifier.verify(token))


def test_signed_claims_nested_1500_deep_are_an_invalid_token(runner: asyncio.Runner) -> None:
    token = _signed(b"[" * 1500 + b"]" * 1500)
    with pytest.raises(oauth.InvalidToken):
        runner.run(_verifier().verify(token))


def test_the_untouched_token_verifies(runner: asyncio.Runner) -> None:
    """The properties above would hold for a verifier that refuses everything: this one does not."""
    principal = runner.run(_verifier().verify(VALID_TOKEN))
    assert (principal.subject, principal.scopes) == ("alice", frozenset({"chat"}))


# (b) the guard

header_names = st.sampled_from([b"authorization", b"x-other", b"cookie"]) | st.binary(min_size=1, max_size=12)
header_values = (
    st.binary(max_size=120)
    | st.sampled_from([b"Bearer", b"Bearer ", b"bearer  ", b"Basic abc", b"Bearer a b", b"Bearer\ta"])
    | tokens.map(lambda token: b"Bearer " + token.encode("utf-8", "surrogatepass"))
    | st.just(f"Bearer {VALID_TOKEN}".encode())
)
header_lists = st.lists(st.tuples(header_names | st.just(b"authorization"), header_values), max_size=5)


@settings(max_examples=300)
@given(raw=header_lists)
def test_the_guard_answers_a_principal_or_400_401_403(runner: asyncio.Runner, raw: list[tuple[bytes, bytes]]) -> None:
    headers = Headers(raw=[(name.lower(), value) for name, value in raw])
    authorizations = headers.getlist("authorization")
    outcome = _outcome(runner, Guard(_verifier()).check(headers, "chat"))
    if isinstance(outcome, oauth.Principal):
        assert len(authorizations) == 1  # one header, holding a token our key signed
        assert authorizations[0].startswith("Bearer ")
        assert "chat" in outcome.scopes
        return
    assert isinstance(outcome, GatewayError), repr(outcome)
    assert outcome.headers["www-authenticate"].startswith('Bearer realm="switchyard"')
    if len(authorizations) > 1:
        assert (outcome.status, outcome.code) == (400, "invalid_request")
        assert outcome.headers["www-authenticate"] == 'Bearer realm="switchyard", error="invalid_request"'
    else:
        assert outcome.status in {401, 403}


def test_the_guard_takes_the_one_valid_header_and_refuses_it_twice(runner: asyncio.Runner) -> None:
    valid = (b"authorization", f"Bearer {VALID_TOKEN}".encode())
    principal = runner.run(Guard(_verifier()).check(Headers(raw=[valid]), "chat"))
    assert principal is not None
    for second in (valid, (b"authorization", b"Basic c3ZjOnN2Yy1zZWNyZXQ=")):
        with pytest.raises(GatewayError) as refused:
            runner.run(Guard(_verifier()).check(Headers(raw=[valid, second]), "chat"))
        assert (refused.value.status, refused.value.code) == (400, "invalid_request")


# (c) a gateway app, in process

RFC6749_ERRORS = {
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "slow_down",
}


class _Tracebacks(logging.Handler):
    """Collects every log record that carries an exception (the app's catch-all logs one per 500)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.levelno >= logging.ERROR:
            self.records.append(record)


@pytest.fixture(scope="module")
def tracebacks() -> Iterator[_Tracebacks]:
    handler = _Tracebacks()
    logging.getLogger().addHandler(handler)
    yield handler
    logging.getLogger().removeHandler(handler)
    assert not handler.records, [record.getMessage() for record in handler.records]


@pytest.fixture(scope="module")
def app(runner: asyncio.Runner, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    """The gateway in `builtin` mode, signing with KEY (written where it keeps its key, in its
    format), its lifespan run; its one replica is nowhere (port 9)."""
    data_dir = tmp_path_factory.mktemp("auth-fuzz")
    (data_dir / "auth").mkdir(mode=0o700)
    entry = {**KEY.as_dict(private=True), "created_at": time.time()}
    (data_dir / "auth" / "signing-keys.json").write_text(json.dumps({"keys": [entry]}))
    values = {
        "pools": [{"name": "p", "replicas": ["http://127.0.0.1:9"]}],
        "data_dir": str(data_dir),
        "auth_mode": "builtin",
        "auth_issuer": ISSUER,
        "auth_clients": [{"client_id": CLIENT, "secret_hash": hash_secret(SECRET), "scopes": ["chat"]}],
    }
    gateway = create_app(GatewaySettings.model_validate(values))
    lifespan = gateway.router.lifespan_context(gateway)
    runner.run(lifespan.__aenter__())
    yield gateway
    runner.run(lifespan.__aexit__(None, None, None))


_hosts = itertools.count(1)


def _request(
    runner: asyncio.Runner, app: FastAPI, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes
) -> httpx.Response:
    """One request from a client address of its own: the token endpoint throttles per address."""
    n = next(_hosts)
    transport = httpx.ASGITransport(app=app, client=(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", 40000))

    async def send() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            return await client.request(method, path, headers=headers, content=body)

    return runner.run(send())


def _basic(client_id: bytes, secret: bytes) -> bytes:
    return b"Basic " + base64.b64encode(client_id + b":" + secret)


credentials = (
    st.binary(max_size=80)
    | st.builds(_basic, st.binary(max_size=12), st.binary(max_size=12))
    | st.builds(
        _basic, st.sampled_from([CLIENT.encode(), b"svc%", b"s%76c", b"\xff\xfe", b"sv+c"]), st.binary(max_size=12)
    )
    | st.just(_basic(CLIENT.encode(), SECRET.encode()))
    | st.sampled_from([b"Basic", b"Basic ", b"Basic !!!!", b"Basic c3Zj", b"basic  c3ZjOnN2Yy1zZWNyZXQ="])
)
FORM = b"application/x-www-form-urlencoded"
content_types = (
    st.just(FORM)
    | st.sampled_from(
        [
            b"application/x-www-form-urlencoded",
            b"application/x-www-form-urlencoded; charset=latin-1",
            b"application/json",
        ]
    )
    | st.binary(max_size=30)
)
form_values = st.text(max_size=12) | st.sampled_from(["client_credentials", "chat", "admin", "%ff", "%", "+"])
bodies = (
    st.binary(max_size=200)
    | st.dictionaries(st.sampled_from(["grant_type", "scope", "client_id", "client_secret", "x"]), form_values).map(
        lambda form: str(httpx.QueryParams(form)).encode()
    )
    | st.sampled_from([b"grant_type=client_credentials", b"grant_type=client_credentials&grant_type=x", b"a=%ff"])
    | st.integers(min_value=4000, max_value=6000).map(lambda n: b"grant_type=client_credentials&x=" + b"a" * n)
)


@settings(max_examples=150)
@given(
    authorizations=st.lists(credentials, max_size=3),
    content_type=st.none() | content_types,
    body=st.sampled_from([b"grant_type=client_credentials", b"grant_type=client_credentials&scope=chat"]) | bodies,
)
def test_the_token_endpoint_answers_rfc_6749_never_5xx(
    runner: asyncio.Runner,
    app: FastAPI,
    tracebacks: _Tracebacks,
    authorizations: list[bytes],
    content_type: bytes | None,
    body: bytes,
) -> None:
    headers = [(b"authorization", value) for value in authorizations]
    if content_type is not None:
        headers.append((b"content-type", content_type))
    response = _request(runner, app, "POST", "/oauth/token", headers, body)
    assert response.status_code < 500, response.text
    assert response.headers["cache-control"] == "no-store"
    answer = response.json()
    if response.status_code == 200:
        assert answer["token_type"] == "Bearer"
        assert authorizations == [_basic(CLIENT.encode(), SECRET.encode())]
        return
    assert answer["error"] in RFC6749_ERRORS, answer
    assert isinstance(answer.get("error_description", ""), str)
    if len(authorizations) > 1:
        assert (response.status_code, answer["error"]) == (400, "invalid_request")
    if response.status_code == 401:
        assert answer["error"] == "invalid_client"
        assert response.headers["www-authenticate"].startswith("Basic")


@pytest.mark.parametrize(
    "authorization",
    [
        _basic(b"\xff\xfe\xfd", b"secret"),  # the id is not UTF-8
        _basic(CLIENT.encode(), b"\xc3\x28"),  # nor the secret
        b"Basic \xff\xfe\x00\x80",  # raw bytes where base64 belongs
        b"Basic " + base64.b64encode(b"svc"),  # no colon
        _basic(b"svc%", SECRET.encode()),  # a % that starts no escape
        _basic(b"svc", b"%ff%fe"),  # an escape that decodes to no UTF-8
        _basic(b"", SECRET.encode()),
        b"Basic c3ZjOnN2Yy1zZWNyZXQ",  # base64 with its padding cut
        b"Bearer " + VALID_TOKEN.encode(),  # another scheme
    ],
)
def test_malformed_basic_credentials_are_invalid_client(
    runner: asyncio.Runner, app: FastAPI, tracebacks: _Tracebacks, authorization: bytes
) -> None:
    headers = [(b"authorization", authorization), (b"content-type", FORM)]
    response = _request(runner, app, "POST", "/oauth/token", headers, b"grant_type=client_credentials")
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"].startswith("Basic ")


def test_form_encoded_credentials_are_decoded(runner: asyncio.Runner, app: FastAPI) -> None:
    """RFC 6749 §2.3.1: the id and the secret are form-urlencoded inside the Basic credentials."""
    headers = [(b"authorization", _basic(b"s%76c", b"svc%2Dsecret")), (b"content-type", FORM)]
    response = _request(runner, app, "POST", "/oauth/token", headers, b"grant_type=client_credentials")
    assert response.status_code == 200, response.text


def test_a_token_over_plain_http_to_a_host_name(runner: asyncio.Runner, app: FastAPI) -> None:
    """authlib refused `http://gateway/...` (not https, not loopback) with an exception: a 500.
    TLS ends in front of the gateway; these requests come to `http://gateway`."""
    headers = [(b"authorization", _basic(CLIENT.encode(), SECRET.encode())), (b"content-type", FORM)]
    response = _request(runner, app, "POST", "/oauth/token", headers, b"grant_type=client_credentials")
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "Bearer"


def test_two_authorization_headers_at_the_token_endpoint(runner: asyncio.Runner, app: FastAPI) -> None:
    good = (b"authorization", _basic(CLIENT.encode(), SECRET.encode()))
    headers = [good, good, (b"content-type", FORM)]
    response = _request(runner, app, "POST", "/oauth/token", headers, b"grant_type=client_credentials")
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"


GUARDED = [
    ("POST", "/v1/chat/completions"),  # a body that fails validation: a request that passes the guard gets 400
    ("POST", "/v1/completions"),
    ("GET", "/v1/models"),
    ("GET", "/admin/pools"),
    ("GET", "/status"),
]


@settings(max_examples=150)
@given(
    route=st.sampled_from(GUARDED),
    authorizations=st.lists(header_values, max_size=3),
)
def test_guarded_routes_never_answer_5xx(
    runner: asyncio.Runner,
    app: FastAPI,
    tracebacks: _Tracebacks,
    route: tuple[str, str],
    authorizations: list[bytes],
) -> None:
    method, path = route
    headers = [(b"authorization", value) for value in authorizations] + [(b"content-type", b"application/json")]
    response = _request(runner, app, method, path, headers, b"{}" if method == "POST" else b"")
    assert response.status_code < 500, response.text
    error = response.json().get("error") if response.status_code >= 400 else None
    if error is not None:
        assert set(error) == {"message", "type", "param", "code"}
    if len(authorizations) > 1:
        assert response.status_code == 400
        assert error is not None
        assert error["code"] == "invalid_request"
        assert response.headers["www-authenticate"] == 'Bearer realm="switchyard", error="invalid_request"'
    elif response.status_code in {401, 403}:
        assert response.headers["www-authenticate"].startswith('Bearer realm="switchyard"')
