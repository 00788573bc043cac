"""The `oauth` package's public API as another process (the sync sidecar) uses it: the bearer
header, scopes, the RFC 6750 challenges, and key sources (a fixed set, a JWKS file)."""

import asyncio
import json
import time
from pathlib import Path

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey

import oauth


def _key() -> ECKey:
    key = ECKey.generate_key("P-256", private=True)
    key.ensure_kid()
    return key


def _token(key: ECKey, **claims: object) -> str:
    now = int(time.time())
    full = {"iss": "https://issuer.test", "aud": "sync", "sub": "svc", "exp": now + 60, "scope": "adapters"} | claims
    return jwt.encode({"alg": "ES256", "typ": "at+jwt", "kid": key.kid}, full, key, algorithms=["ES256"])


@pytest.mark.parametrize(
    ("values", "refusal"),
    [
        ([], oauth.MissingToken),
        (["Basic c3ZjOng="], oauth.MissingToken),
        ([""], oauth.MissingToken),
        (["Bearer"], oauth.InvalidToken),
        (["Bearer   "], oauth.InvalidToken),
        (["Bearer a b"], oauth.InvalidToken),
        (["Bearer a,Bearer b"], oauth.InvalidToken),
        (["Bearer é"], oauth.InvalidToken),
        (["Bearer a", "Bearer a"], oauth.InvalidRequest),
        (["Bearer a", "Basic c3ZjOng="], oauth.InvalidRequest),
    ],
)
def test_bearer_token_refusals(values: list[str], refusal: type[oauth.OAuthError]) -> None:
    with pytest.raises(refusal):
        oauth.bearer_token(values)


@pytest.mark.parametrize("value", ["Bearer abc.DEF-_~+/=", "bearer abc", "BEARER  abc ", "Bearer abc=="])
def test_bearer_token_takes_rfc_6750_tokens(value: str) -> None:
    assert oauth.bearer_token([value]).startswith("abc")


def test_challenges_and_statuses() -> None:
    missing, ambiguous = oauth.MissingToken(), oauth.InvalidRequest("two headers")
    assert (missing.status, missing.challenge("sync")) == (401, 'Bearer realm="sync"')
    assert (ambiguous.status, ambiguous.error) == (400, "invalid_request")
    hostile = oauth.InvalidToken('a "quoted" \\ message\r\nx-injected: 1')
    challenge = hostile.challenge("sync")
    assert challenge.startswith('Bearer realm="sync", error="invalid_token", error_description="')
    assert not {"\r", "\n"} & set(challenge)
    assert challenge.count('"') == 6
    scope = oauth.InsufficientScope("adapters", "admin")
    assert scope.status == 403
    assert scope.challenge("sync") == 'Bearer realm="sync", error="insufficient_scope", scope="adapters admin"'


def test_principal_require_takes_any_one_scope() -> None:
    principal = oauth.Principal("svc", frozenset({"admin"}))
    principal.require("adapters", "admin")
    with pytest.raises(oauth.InsufficientScope) as refused:
        principal.require("adapters")
    assert refused.value.scope == "adapters"


def test_a_verifier_over_a_jwks_file_reads_it_again_for_a_new_kid(tmp_path: Path) -> None:
    old, new = _key(), _key()
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [old.as_dict(private=False)]}))
    jwks = oauth.RemoteJwks(str(path), min_refetch_s=0)
    verifier = oauth.TokenVerifier(jwks, issuer="https://issuer.test", audience="sync", algorithms=("ES256",))

    async def run() -> None:
        assert (await verifier.verify(_token(old))).scopes == frozenset({"adapters"})
        with pytest.raises(oauth.InvalidToken, match="key this server does not know"):
            await verifier.verify(_token(new))
        path.write_text(json.dumps({"keys": [old.as_dict(private=False), new.as_dict(private=False)]}))
        assert (await verifier.verify(_token(new))).subject == "svc"
        with pytest.raises(oauth.InvalidToken, match="not meant for this server"):
            await verifier.verify(_token(new, aud="switchyard"))

    asyncio.run(run())
    assert jwks.fetches == 3  # the first read, and once for each unknown kid


def test_static_keys_and_the_verifier_settings() -> None:
    key = _key()
    keys = oauth.StaticKeys({"keys": [key.as_dict(private=False)]})
    assert asyncio.run(keys.key(key.kid)) is not None
    assert asyncio.run(keys.key(None)) is not None  # the only key
    assert asyncio.run(keys.key("other")) is None
    with pytest.raises(ValueError, match="asymmetric"):
        oauth.TokenVerifier(keys, issuer="i", audience="a", algorithms=("HS256",))
    with pytest.raises(ValueError, match="leeway"):
        oauth.TokenVerifier(keys, issuer="i", audience="a", leeway_s=3600)
