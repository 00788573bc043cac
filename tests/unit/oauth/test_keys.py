"""Where verification keys come from: a fixed set, or a JWKS file read again when a token
names a key it does not hold."""

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


def test_static_keys_find_a_key_by_kid_or_the_only_one() -> None:
    key = _key()
    keys = oauth.StaticKeys({"keys": [key.as_dict(private=False)]})
    assert asyncio.run(keys.key(key.kid)) is not None
    assert asyncio.run(keys.key(None)) is not None  # the only key
    assert asyncio.run(keys.key("other")) is None
