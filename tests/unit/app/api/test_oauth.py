"""The token endpoint (app/api/oauth.py, answering with the built-in issuer of app/auth/issuer.py):
OAuth2's client-credentials grant with its RFC 6749 answers, through a gateway in process.

Its tokens work with the OpenAI SDK; its errors, metadata and JWKS are as RFC 6749 and RFC 8414
have them; a flood is slowed down. Then a property: a gateway app answers arbitrary
`Authorization` headers, content types and bodies on `/oauth/token` with RFC 6749 §5.2's
errors, never a 5xx and never a logged traceback.
"""

import asyncio
import base64
import json
import time

import httpx
import httpx2
import openai
import pytest
from fastapi import FastAPI
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc import jwt

from harness.counting_engine import MODEL
from tests.unit.app.auth.conftest import Gateway
from tests.unit.app.conftest import CLIENT, KEY, SECRET, Tracebacks, send

ISSUER = "https://issuer.test"
AUDIENCE = "switchyard"
_NOW = int(time.time())
VALID_TOKEN = jwt.encode(
    {"alg": "ES256", "typ": "at+jwt", "kid": KEY.kid},
    {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "scope": "chat", "iat": _NOW, "exp": _NOW + 3600},
    KEY,
    algorithms=["ES256"],
)


# the token endpoint and the SDK, through a gateway in process with the built-in issuer


async def test_the_token_endpoint_issues_an_at_jwt_the_sdk_can_use(issuing: Gateway) -> None:
    response = await issuing.token("svc")
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    answer = response.json()
    assert answer["token_type"] == "Bearer"
    assert answer["expires_in"] == 3600
    header = json.loads(base64.urlsafe_b64decode(answer["access_token"].split(".")[0] + "=="))
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "ES256"

    async with _sdk(issuing, answer["access_token"]) as client:
        completion = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert completion.choices[0].message.content
        assert [m.id async for m in client.models.list()] == [MODEL]


async def test_the_sdk_raises_its_own_errors_for_401_and_403(issuing: Gateway) -> None:
    tuner = (await issuing.token("tuner")).json()["access_token"]
    for api_key, error in (("not-a-jwt", openai.AuthenticationError), (tuner, openai.PermissionDeniedError)):
        async with _sdk(issuing, api_key) as client:
            with pytest.raises(error):
                await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])


def _sdk(gateway: Gateway, api_key: str) -> openai.AsyncOpenAI:
    """The OpenAI SDK, reaching the gateway in process (over httpx2, the SDK's HTTP client)."""
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=gateway.app, client=gateway.address))
    return openai.AsyncOpenAI(base_url="http://gateway/v1", api_key=api_key, max_retries=0, http_client=http)


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
async def test_token_endpoint_errors_are_rfc_6749(
    issuing: Gateway, client: str, secret: str, form: dict[str, str], status: int, error: str
) -> None:
    response = await issuing.client.post("/oauth/token", data=form, auth=(client, secret))
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    assert response.headers["cache-control"] == "no-store"


async def test_secrets_in_the_body_are_not_accepted(issuing: Gateway) -> None:
    form = {"grant_type": "client_credentials", "client_id": "svc", "client_secret": "svc-secret"}
    response = await issuing.client.post("/oauth/token", data=form)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


async def test_metadata_and_jwks_are_published(issuing: Gateway) -> None:
    metadata = (await issuing.client.get("/.well-known/oauth-authorization-server")).json()
    assert metadata["issuer"] == "https://issuer.test"
    assert metadata["grant_types_supported"] == ["client_credentials", "authorization_code"]
    assert metadata["token_endpoint_auth_methods_supported"] == ["client_secret_basic", "none"]
    assert metadata["authorization_endpoint"] == "https://issuer.test/oauth/authorize"
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    keys = (await issuing.client.get("/.well-known/jwks.json")).json()["keys"]
    assert keys
    assert all(set(key) >= {"kty", "kid", "crv", "x", "y"} and "d" not in key for key in keys)


async def test_the_token_endpoint_slows_down_a_flood(issuing: Gateway) -> None:
    """All at once: one after the other, a loaded machine's scrypt alone paces them under the rate."""
    form = {"grant_type": "client_credentials"}
    answers = await asyncio.gather(
        *(issuing.client.post("/oauth/token", data=form, auth=("svc", "guess")) for _ in range(40))
    )
    statuses = {answer.status_code for answer in answers}
    assert statuses == {401, 429}
    slowed = next(answer for answer in answers if answer.status_code == 429)
    assert slowed.json()["error"] == "slow_down"
    assert int(slowed.headers["retry-after"]) >= 1


# properties, whatever the bytes: a gateway app in process


RFC6749_ERRORS = {
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "slow_down",
}


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
    tracebacks: Tracebacks,
    authorizations: list[bytes],
    content_type: bytes | None,
    body: bytes,
) -> None:
    headers = [(b"authorization", value) for value in authorizations]
    if content_type is not None:
        headers.append((b"content-type", content_type))
    response = send(runner, app, "POST", "/oauth/token", headers, body)
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
        _basic(b"\xff\xfe", SECRET.encode()),
        _basic(CLIENT.encode(), b"\xc3\x28"),  # nor the secret
        b"Basic \xff\xfe\x00\x80",  # raw bytes where base64 belongs
        b"Basic \xff\xfe\x80\x81",
        b"Basic " + base64.b64encode(b"svc"),  # no colon
        _basic(b"svc%", SECRET.encode()),  # a % that starts no escape
        _basic(b"svc", b"%ff%fe"),  # an escape that decodes to no UTF-8
        _basic(b"", SECRET.encode()),
        b"Basic c3ZjOnN2Yy1zZWNyZXQ",  # base64 with its padding cut
        b"Bearer " + VALID_TOKEN.encode(),  # another scheme
    ],
)
def test_malformed_basic_credentials_are_invalid_client(
    runner: asyncio.Runner, app: FastAPI, tracebacks: Tracebacks, authorization: bytes
) -> None:
    headers = [(b"authorization", authorization), (b"content-type", FORM)]
    response = send(runner, app, "POST", "/oauth/token", headers, b"grant_type=client_credentials")
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"].startswith("Basic ")


def test_form_encoded_credentials_are_decoded(runner: asyncio.Runner, app: FastAPI) -> None:
    """RFC 6749 §2.3.1: the id and the secret are form-urlencoded inside the Basic credentials."""
    headers = [(b"authorization", _basic(b"s%76c", b"svc%2Dsecret")), (b"content-type", FORM)]
    response = send(runner, app, "POST", "/oauth/token", headers, b"grant_type=client_credentials")
    assert response.status_code == 200, response.text


def test_a_token_over_plain_http_to_a_host_name(runner: asyncio.Runner, app: FastAPI) -> None:
    """authlib refused `http://gateway/...` (not https, not loopback) with an exception: a 500.
    TLS ends in front of the gateway; these requests come to `http://gateway`."""
    headers = [(b"authorization", _basic(CLIENT.encode(), SECRET.encode())), (b"content-type", FORM)]
    response = send(runner, app, "POST", "/oauth/token", headers, b"grant_type=client_credentials")
    assert response.status_code == 200, response.text
    assert response.json()["token_type"] == "Bearer"


def test_two_authorization_headers_at_the_token_endpoint(runner: asyncio.Runner, app: FastAPI) -> None:
    good = (b"authorization", _basic(CLIENT.encode(), SECRET.encode()))
    headers = [good, good, (b"content-type", FORM)]
    response = send(runner, app, "POST", "/oauth/token", headers, b"grant_type=client_credentials")
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"
