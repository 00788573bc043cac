"""What every protected route asks: who is calling, and may they use this scope."""

from collections.abc import Mapping

from opentelemetry import trace

from app.auth.issuer import Client, Issuer
from app.auth.jwks import LocalKeys, RemoteJwks
from app.auth.keys import SigningKeys
from app.auth.verifier import KeySource, Principal, TokenVerifier
from app.errors import InsufficientScope, InvalidToken, Unauthenticated
from app.settings import GatewaySettings
from protocol import tracing

__all__ = ["Guard", "build_auth"]

tracer = trace.get_tracer("switchyard.gateway")


class Guard:
    def __init__(self, verifier: TokenVerifier | None) -> None:
        self.verifier = verifier  # None: authentication is disabled

    async def check(self, headers: Mapping[str, str], scope: str) -> Principal | None:
        """The caller's principal, holding `scope`; None when authentication is disabled."""
        if self.verifier is None:
            return None
        authorization = headers.get("authorization")
        if authorization is None:
            raise Unauthenticated()
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise Unauthenticated("This endpoint takes an OAuth2 bearer access token (`Authorization: Bearer ...`).")
        token = token.strip()
        if not token or " " in token:
            raise InvalidToken("The bearer token is empty or malformed.")
        with tracing.span(tracer, "auth") as span:
            principal = await self.verifier.verify(token)
            span.set_attribute("enduser.id", principal.subject)
            if scope not in principal.scopes:
                raise InsufficientScope(scope)
            return principal


def build_auth(settings: GatewaySettings) -> tuple[Guard, Issuer | None]:
    """The guard for the routes, and the built-in issuer when this gateway issues tokens."""
    if settings.auth_mode == "disabled":
        return Guard(None), None
    issuer: Issuer | None = None
    keys: KeySource
    if settings.auth_mode == "builtin":
        signing = SigningKeys(settings.data_dir / "auth", token_ttl_s=settings.auth_token_ttl_s)
        clients = [Client(c.client_id, c.secret_hash, tuple(c.scopes)) for c in settings.auth_clients]
        issuer = Issuer(
            issuer=settings.issuer,
            audience=settings.auth_audience,
            clients=clients,
            signing=signing,
            token_ttl_s=settings.auth_token_ttl_s,
        )
        keys = LocalKeys(signing)
    else:
        assert settings.auth_jwks is not None  # the settings check it
        keys = RemoteJwks(settings.auth_jwks)
    verifier = TokenVerifier(
        keys,
        issuer=settings.issuer,
        audience=settings.auth_audience,
        algorithms=tuple(settings.auth_algorithms),
        leeway_s=settings.auth_leeway_s,
    )
    return Guard(verifier), issuer
