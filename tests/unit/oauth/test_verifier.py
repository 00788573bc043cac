"""The verifier's principal and settings: any one of a route's scopes lets a principal in, and
a verifier refuses symmetric algorithms and a leeway that would make expiry meaningless."""

import pytest
from joserfc.jwk import ECKey

import oauth


def test_principal_require_takes_any_one_scope() -> None:
    principal = oauth.Principal("svc", frozenset({"admin"}))
    principal.require("adapters", "admin")
    with pytest.raises(oauth.InsufficientScope) as refused:
        principal.require("adapters")
    assert refused.value.scope == "adapters"


def test_the_verifier_refuses_symmetric_algorithms_and_a_long_leeway() -> None:
    keys = oauth.StaticKeys({"keys": [ECKey.generate_key("P-256", private=True).as_dict(private=False)]})
    with pytest.raises(ValueError, match="asymmetric"):
        oauth.TokenVerifier(keys, issuer="i", audience="a", algorithms=("HS256",))
    with pytest.raises(ValueError, match="leeway"):
        oauth.TokenVerifier(keys, issuer="i", audience="a", leeway_s=3600)
