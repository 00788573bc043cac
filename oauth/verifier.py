"""Verifying JWT access tokens (RFC 9068) as a resource server.

The checks, in order, each failure an `InvalidToken` (never another exception): size; three
base64url segments; a JSON header, bounded in nesting, whose `alg` is in the allow-list
(asymmetric only: never `none`, never HMAC) and whose `typ` is `at+jwt`; no `crit`; the
signing key found by `kid` in the issuer's keys (`jku`, `x5u`, `jwk` and `x5c` in the header
are never used); the signature; then the claims: `iss` equal to the issuer, `aud`
containing the audience, `exp` and `nbf` within the leeway, a non-empty `sub`. Verified
tokens are kept until they expire (at most `_CACHE_TTL_S`, so a key withdrawn from the
JWKS stops working soon after).
"""

import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError

from oauth.compact import PARSE_ERRORS, read_header
from oauth.errors import InsufficientScope, InvalidToken
from oauth.keys import KeySource

__all__ = ["ACCESS_TOKEN_TYPES", "ASYMMETRIC_ALGORITHMS", "Principal", "TokenVerifier"]

ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
ACCESS_TOKEN_TYPES = ("at+jwt", "application/at+jwt")
_CACHE_TTL_S = 300.0


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token speaks for."""

    subject: str
    scopes: frozenset[str]
    client_id: str | None = None
    expires_at: float = float("inf")

    def require(self, *scopes: str) -> None:
        """Raise `InsufficientScope` unless the token holds at least one of `scopes`."""
        if not any(scope in self.scopes for scope in scopes):
            raise InsufficientScope(*scopes)


class TokenVerifier:
    def __init__(
        self,
        keys: KeySource,
        *,
        issuer: str,
        audience: str,
        algorithms: tuple[str, ...] = ASYMMETRIC_ALGORITHMS,
        leeway_s: float = 30.0,
        max_token_bytes: int = 8192,
        cache_size: int = 10_000,
    ) -> None:
        unsafe = set(algorithms) - set(ASYMMETRIC_ALGORITHMS)
        if unsafe:
            raise ValueError(f"only asymmetric algorithms may verify access tokens, not {sorted(unsafe)}")
        if not 0 <= leeway_s <= 60:
            raise ValueError("the leeway on exp and nbf is between 0 and 60 seconds")
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._algorithms = frozenset(algorithms)
        self._leeway_s = leeway_s
        self._max_token_bytes = max_token_bytes
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._cache_size = cache_size

    async def verify(self, token: str) -> Principal:
        """The principal `token` speaks for; `InvalidToken` when it is not a valid access token."""
        now = time.time()
        cached = self._cache.get(token)
        if cached is not None:
            principal, good_until = cached
            if now < good_until:
                return principal
            del self._cache[token]
        principal = await self._verify(token, now)
        self._cache[token] = (principal, min(principal.expires_at + self._leeway_s, now + _CACHE_TTL_S))
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)  # the oldest verified
        return principal

    async def _verify(self, token: str, now: float) -> Principal:
        if len(token) > self._max_token_bytes:
            raise InvalidToken("The access token is too large.")
        header = read_header(token)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise InvalidToken("The access token's signing algorithm is not accepted.")
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in ACCESS_TOKEN_TYPES:
            raise InvalidToken("The token is not a JWT access token (its `typ` must be `at+jwt`).")
        if "crit" in header:
            raise InvalidToken("The access token has critical header parameters this server does not understand.")
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or len(kid) > 256):
            raise InvalidToken("The access token's `kid` is malformed.")
        key = await self._keys.key(kid)
        if key is None:
            raise InvalidToken("The access token was signed by a key this server does not know.")
        try:
            claims = jwt.decode(token, key, algorithms=[alg]).claims
        except (JoseError, *PARSE_ERRORS):
            raise InvalidToken("The access token's signature does not verify.") from None
        return self._check_claims(claims, now)

    def _check_claims(self, claims: dict[str, Any], now: float) -> Principal:
        issuer = claims.get("iss")
        if not isinstance(issuer, str) or issuer != self._issuer:
            raise InvalidToken("The access token was issued by another issuer.")
        audience = claims.get("aud")
        audiences = [audience] if isinstance(audience, str) else audience
        if not isinstance(audiences, list) or self._audience not in audiences:
            raise InvalidToken("The access token is not meant for this server (`aud`).")
        expires = _seconds(claims.get("exp"))
        if expires is None:
            raise InvalidToken("The access token has no valid expiry (`exp`).")
        if now > expires + self._leeway_s:
            raise InvalidToken("The access token has expired.")
        if "nbf" in claims:
            not_before = _seconds(claims["nbf"])
            if not_before is None or now + self._leeway_s < not_before:
                raise InvalidToken("The access token is not valid yet (`nbf`).")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > 255:
            raise InvalidToken("The access token names no subject (`sub`).")
        client_id = claims.get("client_id")
        return Principal(
            subject, _scopes(claims.get("scope")), client_id if isinstance(client_id, str) else None, expires
        )


def _seconds(value: object) -> float | None:
    """A time claim as a finite number (JSON allows NaN, Infinity and integers past any float)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) else None


def _scopes(value: object) -> frozenset[str]:
    """RFC 9068 / 8693: one space-separated string; some issuers send a list."""
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(s for s in value if isinstance(s, str))
    return frozenset()
