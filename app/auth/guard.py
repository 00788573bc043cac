"""What every protected route asks: who is calling, and may they use this scope.

The checks themselves are the `oauth` package's; this maps its refusals to the gateway's
errors (the OpenAI envelope, with RFC 6750's challenge).
"""

from starlette.datastructures import Headers

import oauth
from app.auth.authorize import User
from app.auth.codes import InProcessCodes, RedisCodes
from app.auth.issuer import Client, Issuer
from app.auth.keys import LocalKeys, SigningKeys
from app.context import RequestContext
from app.errors import AmbiguousCredentials, GatewayError, InsufficientScope, InvalidToken, Unauthenticated
from app.settings import GatewaySettings

__all__ = ["Guard", "build_auth"]


class Guard:
    def __init__(self, verifier: oauth.TokenVerifier | None) -> None:
        self.verifier = verifier  # None: authentication is disabled

    async def check(
        self, headers: Headers, scope: str | tuple[str, ...], request: RequestContext | None = None
    ) -> oauth.Principal | None:
        """The caller's principal, holding `scope` (one of them, for several); None when
        authentication is disabled. The caller is named in the `request`'s trace, granted or not."""
        if self.verifier is None:
            return None
        try:
            token = oauth.bearer_token(headers.getlist("authorization"))
            principal = await self.verifier.verify(token)
            if request is not None:
                request.annotate({"enduser.id": principal.subject})
            principal.require(*((scope,) if isinstance(scope, str) else scope))
            return principal
        except oauth.OAuthError as refusal:
            raise gateway_error(refusal) from None


def gateway_error(refusal: oauth.OAuthError) -> GatewayError:
    """The gateway's error for a refusal of the `oauth` checks: same status, code and challenge."""
    if isinstance(refusal, oauth.InvalidRequest):
        return AmbiguousCredentials(refusal.message)
    if isinstance(refusal, oauth.InsufficientScope):
        return InsufficientScope(refusal.scope)
    if isinstance(refusal, oauth.InvalidToken):
        return InvalidToken(refusal.message)
    return Unauthenticated(refusal.message)


def build_auth(settings: GatewaySettings) -> tuple[Guard, Issuer | None]:
    """The guard for the routes, and the built-in issuer when this gateway issues tokens."""
    if settings.auth_mode == "disabled":
        return Guard(None), None
    issuer: Issuer | None = None
    keys: oauth.KeySource
    if settings.auth_mode == "builtin":
        signing = SigningKeys(settings.data_dir / "auth", token_ttl_s=settings.auth_token_ttl_s)
        clients = [Client(c.client_id, c.secret_hash, tuple(c.scopes)) for c in settings.auth_clients]
        users = [User(u.username, u.password_hash, tuple(u.scopes)) for u in settings.auth_users]
        issuer = Issuer(
            issuer=settings.issuer,
            audience=settings.auth_audience,
            clients=clients,
            signing=signing,
            token_ttl_s=settings.auth_token_ttl_s,
            users=users,
            console_client_id=settings.console_client_id,
            codes=RedisCodes(settings.redis_url) if settings.redis_url else InProcessCodes(),
        )
        keys = LocalKeys(signing)
    else:
        assert settings.auth_jwks is not None  # the settings check it
        keys = oauth.RemoteJwks(settings.auth_jwks)
    verifier = oauth.TokenVerifier(
        keys,
        issuer=settings.issuer,
        audience=settings.auth_audience,
        algorithms=tuple(settings.auth_algorithms),
        leeway_s=settings.auth_leeway_s,
    )
    return Guard(verifier), issuer
