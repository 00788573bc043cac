"""Who may call the sidecar: operators with a token, peers with the shared key.

- Write routes (publish, upload, withdraw, retire, revoke) take a bearer JWT access token (RFC 9068)
  from `auth_issuer`, checked against its JWKS by the `oauth` package (the gateway's own
  checks), with scope `adapters` or `admin`. Refusals are the OpenAI envelope with RFC 6750
  challenges: 401 without a token or with a bad one, 400 for two Authorization headers,
  403 without the scope.
- Peer routes (`/sync/*`, `/blobs/*`) take `Authorization: Bearer <peer_key>`, compared in
  constant time. Without a peer key they are open on a loopback host (every caller is
  local) and closed on any other: whoever reaches the port could otherwise write the
  registry through a delta.
- Read routes (`GET /adapters`, its audit log, `/health`, `/metrics`) are open: they show
  names and digests, never weights, and Prometheus and probes read them.
"""

import hmac

from fastapi import Request

import oauth
from sync.errors import SidecarError
from sync.settings import LOOPBACK_HOSTS, SyncSettings

__all__ = ["REALM", "WRITE_SCOPES", "Refused", "SidecarAuth"]

REALM = "switchyard-sync"
WRITE_SCOPES = ("adapters", "admin")


class Refused(SidecarError):
    """A request without the credential its route needs, with the challenge to answer it."""

    def __init__(self, status: int, message: str, code: str, challenge: str) -> None:
        param = "Authorization" if status == 400 else None
        super().__init__(message, code=code, param=param, headers={"www-authenticate": challenge})
        self.status = status


class SidecarAuth:
    def __init__(self, settings: SyncSettings) -> None:
        self._verifier = (
            None
            if settings.auth_mode == "disabled"
            else oauth.TokenVerifier(
                oauth.RemoteJwks(settings.jwks), issuer=settings.auth_issuer, audience=settings.auth_audience
            )
        )
        self._peer_key = settings.peer_key.get_secret_value().encode() if settings.peer_key else None
        self._peers_open = self._peer_key is None and settings.host in LOOPBACK_HOSTS

    async def writer(self, request: Request) -> oauth.Principal | None:
        """The operator behind a write; None when authentication is disabled."""
        if self._verifier is None:
            return None
        try:
            token = oauth.bearer_token(request.headers.getlist("authorization"))
            principal = await self._verifier.verify(token)
            principal.require(*WRITE_SCOPES)
        except oauth.OAuthError as refusal:
            code = refusal.error or "missing_token"
            raise Refused(refusal.status, refusal.message, code, refusal.challenge(REALM)) from None
        return principal

    def peer(self, request: Request) -> None:
        """Only the other regions' sidecars: the peer key, exactly once."""
        if self._peers_open:
            return
        challenge = f'Bearer realm="{REALM}-peers"'
        if self._peer_key is None:
            raise Refused(401, "This sidecar has no peer key: it takes no peer traffic.", "peer_key_unset", challenge)
        given = request.headers.getlist("authorization")
        scheme, _, key = given[0].strip().partition(" ") if len(given) == 1 else ("", "", "")
        # Constant time: the comparison must not tell a caller how much of a guess was right.
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), self._peer_key):
            raise Refused(401, "Peer routes need the peer key (`Authorization: Bearer <peer_key>`).",
                          "invalid_peer_key", challenge + ', error="invalid_token"')  # fmt: skip
