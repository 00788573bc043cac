"""The guard (app/auth/guard.py): who is calling and whether they hold the route's scope, by
the `oauth` package's checks, each refusal mapped to the OpenAI envelope with RFC 6750's
challenge.

Through a gateway in process with the built-in issuer (tests/unit/app/auth/conftest.py), an
attack suite where every case has its exact status, never a 5xx; and a gateway in `external`
mode against a JWKS server that counts its fetches. Then properties, whatever the bytes: the
token verifier as the guard configures it (on arbitrary strings and near-JWTs: random JSON
headers, nesting thousands deep, huge numbers, NaN, unicode, random base64, tokens our key
really signed over arbitrary payloads) only ever answers a principal or `oauth.InvalidToken`;
the guard on arbitrary header lists only a principal or a 400/401/403; and a gateway app's
guarded routes answer arbitrary `Authorization` headers with a 4xx in the OpenAI envelope,
never a 5xx and never a logged traceback.
"""

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import given, reject, settings
from hypothesis import strategies as st
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey
from starlette.datastructures import Headers

import oauth
from app.auth import Guard
from app.errors import GatewayError
from harness.counting_engine import MODEL
from tests.unit.app.auth.conftest import Gateway, JsonDocument
from tests.unit.app.conftest import KEY, Tracebacks, send

ISSUER = "https://issuer.test"
AUDIENCE = "switchyard"
CHALLENGE = 'Bearer realm="switchyard"'


def _claims(**changes: Any) -> dict[str, Any]:
    """Claims the gateway takes, changed: None removes a claim, `_FromNow` is a time from now."""
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "alice", "aud": AUDIENCE, "exp": now + 600, "iat": now}
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


# the attack suite: each case's exact answer, through a gateway in process


async def test_no_credentials_get_a_bare_challenge(issuing: Gateway) -> None:
    response = await issuing.chat(None)
    assert _refused(response) == "missing_token"
    assert response.headers["www-authenticate"] == CHALLENGE
    assert _refused(await issuing.chat(None, authorization="Basic c3ZjOnN2Yy1zZWNyZXQ=")) == "missing_token"


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_alg_none_in_every_spelling(issuing: Gateway, alg: str) -> None:
    for signature in (b"", b"x"):
        token = _unsigned({"alg": alg, "typ": "at+jwt"}, _claims(), signature)
        assert _refused(await issuing.chat(token)) == "invalid_token"


async def test_hs256_signed_with_the_public_key_as_secret(issuing: Gateway) -> None:
    public = issuing.signing_key()
    for secret in (public.as_pem(private=False), json.dumps(public.as_dict(private=False)).encode()):
        header = {"alg": "HS256", "typ": "at+jwt", "kid": public.kid}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(_claims()).encode())}"
        signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        assert _refused(await issuing.chat(f"{signing_input}.{_b64(signature)}")) == "invalid_token"


async def test_a_key_we_do_not_know(issuing: Gateway) -> None:
    stranger = ECKey.generate_key("P-256", private=True)
    assert _refused(await issuing.chat(_sign(stranger, _claims(), kid="stranger"))) == "invalid_token"
    # Our kid on a stranger's signature, and a stranger's key offered in the header itself.
    ours = issuing.signing_key().kid
    forged = _sign(stranger, _claims(), kid=ours, jwk=stranger.as_dict(private=False))
    assert _refused(await issuing.chat(forged)) == "invalid_token"


@pytest.mark.parametrize("kid", ["../../../../etc/passwd", "x' OR '1'='1", "k" * 300, 7, {"$ne": ""}, ["a"]])
async def test_kid_injection(issuing: Gateway, kid: object) -> None:
    token = _unsigned({"alg": "ES256", "typ": "at+jwt", "kid": kid}, _claims(), b"s" * 64)
    assert _refused(await issuing.chat(token)) == "invalid_token"


async def test_jku_and_x5u_are_never_fetched(issuing: Gateway, jwks: JsonDocument) -> None:
    stranger = ECKey.generate_key("P-256", private=True)
    stranger.ensure_kid()
    before = jwks.fetches
    jwks.document = {"keys": [stranger.as_dict(private=False)]}
    for header in ({"jku": jwks.url}, {"x5u": jwks.url}):
        assert _refused(await issuing.chat(_sign(stranger, _claims(), **header))) == "invalid_token"
    assert jwks.fetches == before


@pytest.mark.parametrize("typ", [None, "JWT", "jwt", "at+JWS", "id+jwt"])
async def test_typ_must_be_at_jwt(issuing: Gateway, typ: str | None) -> None:
    key = issuing.signing_key()
    full = {"alg": "ES256", "kid": key.kid} | ({"typ": typ} if typ else {})
    token = jwt.encode(full, _claims(), key, algorithms=["ES256"], default_type=None)
    assert _refused(await issuing.chat(token)) == "invalid_token"


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt"])
async def test_typ_spellings_of_at_jwt_pass(issuing: Gateway, typ: str) -> None:
    assert (await issuing.chat(_sign(issuing.signing_key(), _claims(), typ=typ))).status_code == 200


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
async def test_claims(issuing: Gateway, changes: dict[str, Any], status: int) -> None:
    response = await issuing.chat(_sign(issuing.signing_key(), _claims(**changes)))
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
async def test_malformed_tokens(issuing: Gateway, token: str) -> None:
    assert _refused(await issuing.chat(token)) == "invalid_token"


async def test_a_header_nested_1500_deep_is_a_401_and_logs_no_traceback(
    issuing: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    """It raised RecursionError out of the header parser: a 500 and a traceback per request."""
    for document in (b"[" * 1500 + b"]" * 1500, b'{"":' * 1500 + b"1" + b"}" * 1500):
        token = f"{_b64(document)}.{_b64(json.dumps(_claims()).encode())}.c2ln"
        assert _refused(await issuing.chat(token)) == "invalid_token"
    assert not [record.getMessage() for record in caplog.records if record.exc_info]


async def test_two_authorization_headers_are_refused(issuing: Gateway) -> None:
    """Ambiguous credentials (a proxy may have read the other one): 400, whichever they are."""
    token = _sign(issuing.signing_key(), _claims())
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for second in (f"Bearer {token}", "Bearer forged", "Basic c3ZjOnN2Yy1zZWNyZXQ="):
        headers = [("authorization", f"Bearer {token}"), ("authorization", second)]
        for response in (
            await issuing.client.post("/v1/chat/completions", json=body, headers=headers),
            await issuing.client.get("/v1/models", headers=headers),
            await issuing.client.get("/admin/pools", headers=headers),
        ):
            assert response.status_code == 400, response.text
            assert response.json()["error"]["code"] == "invalid_request"
            assert response.json()["error"]["param"] == "Authorization"
            assert response.headers["www-authenticate"] == 'Bearer realm="switchyard", error="invalid_request"'
    assert (await issuing.chat(token)).status_code == 200  # the same token, sent once
    basic = ("authorization", "Basic " + base64.b64encode(b"svc:svc-secret").decode())
    form = {"grant_type": "client_credentials"}
    response = await issuing.client.post("/oauth/token", data=form, headers=[basic, basic])
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"


async def test_a_signature_over_other_claims(issuing: Gateway) -> None:
    header, _, signature = _sign(issuing.signing_key(), _claims()).split(".")
    tampered = f"{header}.{_b64(json.dumps(_claims(sub='root', scope='chat admin')).encode())}.{signature}"
    assert _refused(await issuing.chat(tampered)) == "invalid_token"


# the external mode


async def test_external_issuer_tokens_and_a_flood_of_unknown_kids(
    external: Gateway, issuing: Gateway, jwks: JsonDocument
) -> None:
    jwks.document = {"keys": [issuing.signing_key().as_dict(private=False)]}
    assert (await external.chat(_sign(issuing.signing_key(), _claims()))).status_code == 200
    before = jwks.fetches
    stranger = ECKey.generate_key("P-256", private=True)
    for i in range(40):
        assert _refused(await external.chat(_sign(stranger, _claims(), kid=f"made-up-{i}"))) == "invalid_token"
    assert jwks.fetches - before <= 1  # one refetch per 30 s, whatever the flood


# properties, whatever the bytes


def _valid_claims(**changes: Any) -> dict[str, Any]:
    """Claims the gateway takes, with `changes` merged as they are (None stays a JSON null)."""
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "scope": "chat", "iat": now, "exp": now + 3600}
    return claims | changes


def _signed(payload: bytes, **header: Any) -> str:
    """A compact JWS our key really signed: everything after the signature is still hostile."""
    return jws.serialize_compact({"alg": "ES256", "typ": "at+jwt", "kid": KEY.kid, **header}, payload, KEY)


VALID_TOKEN = jwt.encode({"alg": "ES256", "typ": "at+jwt", "kid": KEY.kid}, _valid_claims(), KEY, algorithms=["ES256"])

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
            lambda changes: json.dumps(_valid_claims(**changes)).encode()
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
        token = f"{_b64(document)}.{_b64(json.dumps(_valid_claims()).encode())}.c2ln"
        with pytest.raises(oauth.InvalidToken):
            runner.run(verifier.verify(token))
    token = f"{_b64(documents[0])}.{_b64(json.dumps(_valid_claims()).encode())}.c2ln"
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


# (c) the guarded routes of a gateway app, in process


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
    tracebacks: Tracebacks,
    route: tuple[str, str],
    authorizations: list[bytes],
) -> None:
    method, path = route
    headers = [(b"authorization", value) for value in authorizations] + [(b"content-type", b"application/json")]
    response = send(runner, app, method, path, headers, b"{}" if method == "POST" else b"")
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
