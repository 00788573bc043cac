"""The bearer token of a request (RFC 6750 §2.1), as another process (the sync sidecar) reads it
through the `oauth` package: exactly one `Authorization` header with one well-formed token."""

import pytest

import oauth


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
