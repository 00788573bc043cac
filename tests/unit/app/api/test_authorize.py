"""The console's sign-in on the built-in issuer (app/auth/authorize.py, app/api/oauth.py): the
authorization-code grant with PKCE, through a gateway in process.

A person signs in on the login page and the console gets a code bound to its redirect URI and
PKCE challenge, good once; the token speaks for the user with the scopes they have. Hostile
links (another place to send the code, a plain challenge, markup in the state) and hostile
exchanges (a replayed, stolen or unverified code) are refused.
"""

import asyncio
import base64
import hashlib
import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from app.api import oauth
from app.auth import codes
from app.auth.authorize import Authorizer, User
from app.auth.secrets import hash_secret
from app.auth.throttle import Throttle
from harness.servers import Redis
from tests.unit.app.auth.conftest import Gateway, serving, settings_of

CONSOLE = "switchyard-console"
CALLBACK = "https://gateway/console/callback"  # the test client's Host is `gateway`; the issuer is https
PASSWORDS = {"ada": "ada-password", "bob": "bob-password"}
USERS = [
    {"username": "ada", "password_hash": hash_secret(PASSWORDS["ada"]), "scopes": ["chat", "admin"]},
    {"username": "bob", "password_hash": hash_secret(PASSWORDS["bob"]), "scopes": ["chat"]},
]


@pytest.fixture(autouse=True)
def fresh_throttles(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sign-in throttle is per process: each test starts with full buckets."""
    monkeypatch.setattr(oauth, "_sign_ins", Throttle(rate_per_s=1.0, burst=10))


@pytest.fixture
async def issuing(tmp_path: Path) -> AsyncIterator[Gateway]:
    async with serving(settings_of(tmp_path, auth_users=USERS)) as gateway:
        yield gateway


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


def link(challenge: str, **overrides: str) -> dict[str, str]:
    params = {
        "response_type": "code",
        "client_id": CONSOLE,
        "redirect_uri": CALLBACK,
        "state": "s-123",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "scope": "chat admin",
    }
    return {k: v for k, v in (params | overrides).items() if v is not None}


def hidden_fields(page: str) -> dict[str, str]:
    return {unescape(n): unescape(v) for n, v in re.findall(r'type="hidden" name="([^"]*)" value="([^"]*)"', page)}


async def sign_in(gateway: Gateway, params: dict[str, str], user: str, password: str) -> httpx.Response:
    page = await gateway.client.get("/oauth/authorize", params=params)
    assert page.status_code == 200, page.text
    form = hidden_fields(page.text) | {"username": user, "password": password}
    return await gateway.client.post("/oauth/authorize", data=form)


def query_of(response: httpx.Response) -> dict[str, str]:
    return query_of_location(response.headers["location"])


def query_of_location(location: str) -> dict[str, str]:
    assert location.startswith(CALLBACK + "?"), location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def exchange(gateway: Gateway, code: str, verifier: str, /, **overrides: str) -> httpx.Response:
    form = {"grant_type": "authorization_code", "client_id": CONSOLE, "code": code, "redirect_uri": CALLBACK}
    return await gateway.client.post("/oauth/token", data=form | {"code_verifier": verifier} | overrides)


async def code_for(gateway: Gateway, challenge: str, user: str = "ada", **overrides: str) -> str:
    response = await sign_in(gateway, link(challenge, **overrides), user, PASSWORDS[user])
    assert response.status_code == 303, response.text
    return query_of(response)["code"]


def claims(token: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    return payload


# the flow


async def test_a_user_signs_in_and_the_console_gets_a_token_for_them(issuing: Gateway) -> None:
    verifier, challenge = pkce()
    page = await issuing.client.get("/oauth/authorize", params=link(challenge))
    assert page.status_code == 200
    assert 'autocomplete="current-password"' in page.text
    assert '<label for="username">' in page.text
    policy = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy
    assert "script-src" not in policy
    assert "default-src 'none'" in policy
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["referrer-policy"] == "no-referrer"

    response = await issuing.client.post(
        "/oauth/authorize", data=hidden_fields(page.text) | {"username": "ada", "password": PASSWORDS["ada"]}
    )
    assert response.status_code == 303
    query = query_of(response)
    assert query["state"] == "s-123"

    answer = await exchange(issuing, query["code"], verifier)
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    body = answer.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["scope"] == "chat admin"
    assert "refresh_token" not in body
    token = claims(body["access_token"])
    assert token["sub"] == "ada"
    assert token["client_id"] == CONSOLE
    assert token["aud"] == "switchyard"
    assert (await issuing.chat(body["access_token"])).status_code == 200
    pools = await issuing.client.get("/admin/pools", headers={"authorization": f"Bearer {body['access_token']}"})
    assert pools.status_code == 200


async def test_a_user_gets_only_the_scopes_they_have(issuing: Gateway) -> None:
    verifier, challenge = pkce()
    body = (await exchange(issuing, await code_for(issuing, challenge, user="bob"), verifier)).json()
    assert body["scope"] == "chat"  # asked for chat and admin; bob has chat only
    pools = await issuing.client.get("/admin/pools", headers={"authorization": f"Bearer {body['access_token']}"})
    assert pools.status_code == 403

    verifier, challenge = pkce()  # asking for nothing: everything the user may have
    body = (await exchange(issuing, await code_for(issuing, challenge, scope=""), verifier)).json()
    assert body["scope"] == "chat admin"

    _, challenge = pkce()  # asking only for what the user may not have
    response = await sign_in(issuing, link(challenge, scope="admin"), "bob", PASSWORDS["bob"])
    assert response.status_code == 303
    assert query_of(response)["error"] == "access_denied"
    assert "code" not in query_of(response)


@pytest.mark.parametrize(("user", "password"), [("ada", "wrong"), ("nobody", "ada-password"), ("ada", "x" * 2000)])
async def test_a_wrong_password_shows_the_form_again(issuing: Gateway, user: str, password: str) -> None:
    _, challenge = pkce()
    response = await sign_in(issuing, link(challenge), user, password)
    assert response.status_code == 401
    assert "location" not in response.headers
    assert '<p role="alert">The user name or password is wrong.</p>' in response.text
    assert hidden_fields(response.text)["code_challenge"] == challenge  # the form again, ready for another try


async def test_guessing_passwords_is_slowed_down_without_locking_the_user_out(issuing: Gateway) -> None:
    _, challenge = pkce()
    answers = [(await sign_in(issuing, link(challenge), "ada", f"guess-{n}")).status_code for n in range(12)]
    assert answers[:10] == [401] * 10
    assert answers[10:] == [429, 429]
    response = await sign_in(issuing, link(challenge), "ada", PASSWORDS["ada"])
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) >= 1
    # ada herself, from her own address, is not locked out by someone guessing in her name
    transport = httpx.ASGITransport(app=issuing.app, client=("198.51.100.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as elsewhere:
        page = await elsewhere.get("/oauth/authorize", params=link(challenge))
        form = hidden_fields(page.text) | {"username": "ada", "password": PASSWORDS["ada"]}
        response = await elsewhere.post("/oauth/authorize", data=form)
    assert response.status_code == 303
    assert "code" in query_of(response)


# hostile links


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "https://evil.example/console/callback",
        "http://gateway/console/callback",  # the issuer is https: no code over plain HTTP
        "https://gateway/console/elsewhere",
        "https://gateway/console/callback?next=https://evil.example",
        "https://gateway/console/callback#x",
        "https://gateway@evil.example/console/callback",
        "https://gateway:8443/console/callback",
        "javascript:alert(1)//gateway/console/callback",
        "",
        # what a URL parser forgives and a browser follows elsewhere
        "ht\ttps://gateway/console/callback",
        " https://gateway/console/callback",
        "\x01https://gateway/console/callback",
        "https://gateway/console/call\nback",
        "https://gate\rway/console/callback",
        "https://gateway/console/callback ",
        "https://gateway/console/callback/",
        "https://gateway/console/%63allback",
    ],
)
async def test_a_link_that_sends_the_code_elsewhere_is_refused_on_the_page(issuing: Gateway, redirect_uri: str) -> None:
    _, challenge = pkce()
    params = link(challenge, redirect_uri=redirect_uri)
    page = await issuing.client.get("/oauth/authorize", params=params)
    assert page.status_code == 400
    assert "location" not in page.headers
    assert "<form" not in page.text
    form = params | {"username": "ada", "password": PASSWORDS["ada"]}
    posted = await issuing.client.post("/oauth/authorize", data=form)
    assert posted.status_code == 400
    assert "location" not in posted.headers


async def test_a_link_for_another_client_is_refused_on_the_page(issuing: Gateway) -> None:
    _, challenge = pkce()
    for client_id in ("svc", "", "other"):
        page = await issuing.client.get("/oauth/authorize", params=link(challenge, client_id=client_id))
        assert page.status_code == 400
        assert "location" not in page.headers


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge_method": None}, "invalid_request"),
        ({"code_challenge": None}, "invalid_request"),
        ({"code_challenge": "short"}, "invalid_request"),
        ({"code_challenge": "~" * 43}, "invalid_request"),  # never a base64url SHA-256
        ({"code_challenge": "A" * 42 + "="}, "invalid_request"),
        ({"scope": "chat root"}, "invalid_scope"),
    ],
)
async def test_a_bad_request_goes_back_to_the_console_with_its_error(
    issuing: Gateway, overrides: dict[str, str | None], error: str
) -> None:
    _, challenge = pkce()
    params: dict[str, Any] = link(challenge, **overrides)  # type: ignore[arg-type]
    page = await issuing.client.get("/oauth/authorize", params=params)
    assert page.status_code == 303
    query = query_of(page)
    assert query["error"] == error
    assert query["state"] == "s-123"
    assert query["error_description"]


async def test_markup_in_the_state_is_escaped(issuing: Gateway) -> None:
    _verifier, challenge = pkce()
    state = '"><script>alert(1)</script>'
    page = await issuing.client.get("/oauth/authorize", params=link(challenge, state=state))
    assert "<script>" not in page.text
    assert hidden_fields(page.text)["state"] == state
    response = await sign_in(issuing, link(challenge, state=state), "ada", PASSWORDS["ada"])
    assert query_of(response)["state"] == state


async def test_repeated_parameters_are_refused(issuing: Gateway) -> None:
    _, challenge = pkce()
    query = httpx.QueryParams(link(challenge)).add("redirect_uri", "https://evil.example/console/callback")
    page = await issuing.client.get(f"/oauth/authorize?{query}")
    assert page.status_code == 400
    assert "location" not in page.headers


async def test_a_long_state_in_any_script_survives_the_form(issuing: Gateway) -> None:
    verifier, challenge = pkce()
    state = "é" * 512  # 1,024 bytes: the most a state may have
    response = await sign_in(issuing, link(challenge, state=state), "ada", PASSWORDS["ada"])
    assert query_of(response)["state"] == state
    assert (await exchange(issuing, query_of(response)["code"], verifier)).status_code == 200
    page = await issuing.client.get("/oauth/authorize", params=link(challenge, state=state + "é"))
    assert page.status_code == 400


async def test_plain_http_is_for_this_machine_or_the_issuer_s_own_address(tmp_path: Path) -> None:
    """The issuer is http: the console may come back over http on loopback, or on the
    issuer's own address; never over http to a name that TLS is meant to front."""
    settings = settings_of(tmp_path, auth_users=USERS, auth_issuer="http://10.1.2.3:8000")
    async with serving(settings) as gateway:
        _, challenge = pkce()
        hosts = {"127.0.0.1:8000": True, "localhost:9000": True, "[::1]:8000": True, "10.1.2.3:8000": True,
                 "gateway.example.com": False, "10.1.2.3:8001": False}  # fmt: skip
        for host, allowed in hosts.items():
            params = link(challenge, redirect_uri=f"http://{host}/console/callback")
            page = await gateway.client.get("/oauth/authorize", params=params, headers={"host": host})
            assert (page.status_code == 200) is allowed, host
            params = link(challenge, redirect_uri=f"https://{host}/console/callback")
            page = await gateway.client.get("/oauth/authorize", params=params, headers={"host": host})
            assert page.status_code == 200, host  # https is always the console's
        for host in ("[::1", "a]b"):  # Host headers that are no host: refused on the page, never a 5xx
            params = link(challenge, redirect_uri=f"http://{host}/console/callback")
            page = await gateway.client.get("/oauth/authorize", params=params, headers={"host": host})
            assert page.status_code == 400, host


# hostile exchanges


async def test_a_code_is_good_once_even_when_raced(issuing: Gateway) -> None:
    verifier, challenge = pkce()
    code = await code_for(issuing, challenge)
    answers = await asyncio.gather(*(exchange(issuing, code, verifier) for _ in range(8)))
    assert sorted(a.status_code for a in answers) == [200] + [400] * 7
    assert {a.json().get("error") for a in answers if a.status_code == 400} == {"invalid_grant"}


async def test_a_code_needs_its_own_verifier_and_is_spent_by_a_wrong_one(issuing: Gateway) -> None:
    verifier, challenge = pkce()
    code = await code_for(issuing, challenge)
    stolen = await exchange(issuing, code, pkce()[0])
    assert stolen.status_code == 400
    assert stolen.json()["error"] == "invalid_grant"
    assert (await exchange(issuing, code, verifier)).status_code == 400  # spent: the thief may have guessed


@pytest.mark.parametrize(
    ("overrides", "status", "error"),
    [
        ({"redirect_uri": "https://gateway/console/other"}, 400, "invalid_grant"),
        ({"client_id": "svc"}, 401, "invalid_client"),
        ({"code_verifier": "short"}, 400, "invalid_request"),
        ({"code_verifier": "A" * 43 + "\n"}, 400, "invalid_request"),
        ({"code": ""}, 400, "invalid_request"),
        ({"code": "made-up"}, 400, "invalid_grant"),
    ],
)
async def test_an_exchange_that_does_not_match_its_code_is_refused(
    issuing: Gateway, overrides: dict[str, str], status: int, error: str
) -> None:
    verifier, challenge = pkce()
    code = await code_for(issuing, challenge)
    response = await exchange(issuing, code, verifier, **overrides)
    assert response.status_code == status
    assert response.json()["error"] == error


async def test_a_public_client_sends_no_credentials(issuing: Gateway) -> None:
    verifier, challenge = pkce()
    code = await code_for(issuing, challenge)
    form = {"grant_type": "authorization_code", "client_id": CONSOLE, "code": code, "redirect_uri": CALLBACK,
            "code_verifier": verifier}  # fmt: skip
    response = await issuing.client.post("/oauth/token", data=form, auth=("svc", "svc-secret"))
    assert response.headers["www-authenticate"].startswith("Basic")
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


async def test_an_expired_code_is_refused(issuing: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    verifier, challenge = pkce()
    code = await code_for(issuing, challenge)
    clock = time.time() + codes.CODE_TTL_S + 1
    monkeypatch.setattr(time, "time", lambda: clock)
    response = await exchange(issuing, code, verifier)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


async def test_an_exchange_gives_no_scope_the_user_lost_since_the_code(tmp_path: Path) -> None:
    """Codes in Redis outlive a restart: one issued before a user's scopes were cut yields only
    what they have now."""
    store = codes.InProcessCodes()
    first = Authorizer(client_id=CONSOLE, users=[User("ada", "x", ("chat", "admin"))], codes=store,
                       issuer="https://issuer.test", scopes=("chat", "admin"))  # fmt: skip
    verifier, challenge = pkce()
    asked = first.request(link(challenge), "gateway")
    code = query_of_location(await first.grant(asked, User("ada", "x", ("chat", "admin"))))["code"]
    after = Authorizer(client_id=CONSOLE, users=[User("ada", "x", ("chat",))], codes=store,
                       issuer="https://issuer.test", scopes=("chat", "admin"))  # fmt: skip
    form = {"client_id": CONSOLE, "code": code, "redirect_uri": CALLBACK, "code_verifier": verifier}
    user, scope = await after.exchange(form, authorized=False)
    assert (user.username, scope) == ("ada", "chat")


# codes in Redis (workers > 1): one use across processes, and an outage answered, not raised


async def test_codes_in_redis_are_good_once_and_an_outage_is_an_oauth_error(tmp_path: Path, redis: Redis) -> None:
    settings = settings_of(tmp_path, auth_users=USERS, redis_url=redis.url)
    async with serving(settings) as gateway:
        verifier, challenge = pkce()
        code = await code_for(gateway, challenge)
        store = codes.RedisCodes(redis.url)
        assert await store.take("made-up") is None
        await store.aclose()
        assert (await exchange(gateway, code, verifier)).status_code == 200
        assert (await exchange(gateway, code, verifier)).status_code == 400

        code = await code_for(gateway, challenge)
        redis.stop()
        response = await exchange(gateway, code, verifier)
        assert response.status_code == 503
        assert response.json()["error"] == "temporarily_unavailable"
        response = await sign_in(gateway, link(challenge), "ada", PASSWORDS["ada"])
        assert response.status_code == 303
        assert query_of(response)["error"] == "temporarily_unavailable"


async def test_users_and_clients_never_share_a_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="share no name"):
        settings_of(tmp_path, auth_users=[{"username": "svc", "password_hash": USERS[0]["password_hash"]}])
    with pytest.raises(ValueError, match="console_client_id"):
        settings_of(tmp_path, auth_users=USERS, console_client_id="ada")
