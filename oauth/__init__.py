"""A resource server's side of OAuth2: the bearer token of a request (RFC 6750) and JWT access
tokens (RFC 9068) verified against an issuer's keys. Standard library, joserfc and httpx only,
so that every process that checks tokens (the gateway, the sync sidecar) shares these checks.

    from oauth import OAuthError, RemoteJwks, TokenVerifier, bearer_token

    verifier = TokenVerifier(
        RemoteJwks("https://gateway.example/.well-known/jwks.json"),  # or a file's path, or StaticKeys
        issuer="https://gateway.example",
        audience="switchyard",
        algorithms=("ES256",),
        leeway_s=30,
    )
    try:
        principal = await verifier.verify(bearer_token(request.headers.getlist("authorization")))
        principal.require("adapters", "admin")  # any one of them
    except OAuthError as refusal:
        # refusal.status (401, 400 or 403), refusal.error (RFC 6750 code or None),
        # refusal.message, and refusal.challenge(realm) for the WWW-Authenticate header
        ...

Every failure while reading a token, whatever the bytes, is an `OAuthError`; nothing else
escapes `bearer_token`, `TokenVerifier.verify` or `Principal.require`.
"""

from oauth.bearer import bearer_token
from oauth.errors import InsufficientScope, InvalidRequest, InvalidToken, MissingToken, OAuthError
from oauth.keys import KeySource, RemoteJwks, StaticKeys, find_key
from oauth.verifier import ACCESS_TOKEN_TYPES, ASYMMETRIC_ALGORITHMS, Principal, TokenVerifier

__all__ = [
    "ACCESS_TOKEN_TYPES",
    "ASYMMETRIC_ALGORITHMS",
    "InsufficientScope",
    "InvalidRequest",
    "InvalidToken",
    "KeySource",
    "MissingToken",
    "OAuthError",
    "Principal",
    "RemoteJwks",
    "StaticKeys",
    "TokenVerifier",
    "bearer_token",
    "find_key",
]
