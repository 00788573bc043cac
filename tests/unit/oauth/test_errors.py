"""A resource server's refusals: each one's HTTP status, and its RFC 6750 challenge, which no
message can break out of."""

import oauth


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
