"""The built-in issuer: the OAuth2 client-credentials grant (RFC 6749 §4.4) on authlib's
authorization server, and the console's authorization-code grant with PKCE (app/auth/authorize.py),
issuing RFC 9068 JWT access tokens signed with `SigningKeys`.

Clients come from the settings (`auth_clients`: id, scrypt hash of the secret, scopes) and
authenticate with HTTP Basic (`client_secret_basic`) only, read by our own strict parser
(app/auth/basic.py): authlib's answers 500 to credentials that are not UTF-8. Errors are
RFC 6749 §5.2's.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from authlib.oauth2 import AuthorizationServer, OAuth2Request
from authlib.oauth2.rfc6749 import ClientMixin, InvalidClientError, InvalidScopeError, OAuth2Payload
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from joserfc.jwk import KeySet

from app.auth.authorize import Authorizer, TokenError, User
from app.auth.basic import basic_credentials
from app.auth.codes import CodeStore, InProcessCodes
from app.auth.keys import SIGNING_ALGORITHM, SigningKeys
from app.auth.secrets import hash_secret, new_secret, verify_secret

__all__ = ["SCOPES", "Client", "Issuer"]

SCOPES = ("chat", "finetune", "adapters", "admin")


@dataclass(frozen=True)
class Client(ClientMixin):  # type: ignore[misc]
    client_id: str
    secret_hash: str
    scopes: tuple[str, ...]

    def get_client_id(self) -> str:
        return self.client_id

    def get_allowed_scope(self, scope: str | None) -> str:
        """What it asked for, all of which it may have; everything it may have when it asked for nothing."""
        if not scope:
            return " ".join(self.scopes)
        asked = scope.split()
        if not set(asked) <= set(self.scopes):
            raise InvalidScopeError(description=f"this client may ask for: {' '.join(self.scopes)}")
        return " ".join(asked)

    def check_client_secret(self, client_secret: str) -> bool:
        return verify_secret(client_secret, self.secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == "client_secret_basic"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"

    def get_default_redirect_uri(self) -> None:
        return None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_response_type(self, response_type: str) -> bool:
        return False


@cache
def _unknown_client() -> Client:
    """Checked when the client id is unknown, so that a wrong id takes as long as a wrong secret."""
    return Client("", hash_secret(new_secret()), ())


class _FormPayload(OAuth2Payload):  # type: ignore[misc]
    def __init__(self, form: Mapping[str, str]) -> None:
        self._form = dict(form)

    @property
    def data(self) -> dict[str, str]:
        return self._form

    @property
    def datalist(self) -> dict[str, list[str]]:
        return {key: [value] for key, value in self._form.items()}


class _TokenRequest(OAuth2Request):  # type: ignore[misc]
    def __init__(self, path: str, headers: Mapping[str, str], form: Mapping[str, str]) -> None:
        # authlib refuses a URI that is neither https nor loopback, and raised that outside its
        # error handling (a 500 for every token request with a Host header like `gateway`).
        # TLS ends in front of the gateway, and the URL a request came to is rebuilt from its
        # own Host header, so that check could prove nothing here; authlib reads the URI for
        # nothing else.
        super().__init__("POST", f"https://localhost{path}", headers=headers)  # Starlette's: case-insensitive
        self.payload = _FormPayload(form)
        self._form = dict(form)

    @property
    def form(self) -> dict[str, str]:
        return self._form

    @property
    def args(self) -> dict[str, str]:
        return {}


class _Tokens(JWTBearerTokenGenerator):  # type: ignore[misc]
    def __init__(self, issuer: str, audience: str, signing: SigningKeys, ttl_s: int) -> None:
        super().__init__(issuer, alg=SIGNING_ALGORITHM, expires_generator=lambda client, grant_type: ttl_s)
        self._audience = audience
        self._signing = signing

    def get_jwks(self) -> KeySet:
        return KeySet([self._signing.current()])  # its kid goes into the header

    def get_audiences(self, client: Client, user: object, scope: str) -> str:
        return self._audience


class _Server(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, clients: Mapping[str, Client]) -> None:
        super().__init__(scopes_supported=list(SCOPES))
        self._clients = clients

    def query_client(self, client_id: str) -> Client | None:
        return self._clients.get(client_id)

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        """JWTs are self-contained: nothing to keep."""

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """No listeners."""

    def create_oauth2_request(self, request: _TokenRequest) -> _TokenRequest:
        return request

    def handle_response(
        self, status: int, body: Any, headers: list[tuple[str, str]]
    ) -> tuple[int, Any, list[tuple[str, str]]]:
        return status, body, headers


def _authenticate_basic(query_client: Callable[[str], Client | None], request: OAuth2Request) -> Client:
    """`client_secret_basic`, strictly; an unknown client costs the same scrypt as a wrong secret."""
    credentials = basic_credentials(request.headers.get("authorization", ""))
    if credentials is None:
        raise InvalidClientError(
            status_code=401, description="Send the client's id and secret as HTTP Basic credentials (RFC 6749 2.3.1)."
        )
    client_id, secret = credentials
    client = query_client(client_id)
    if not (client or _unknown_client()).check_client_secret(secret) or client is None:
        raise InvalidClientError(status_code=401, description="The client id or secret is wrong.")
    return client


class Issuer:
    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        clients: list[Client],
        signing: SigningKeys,
        token_ttl_s: int,
        users: list[User] | None = None,
        console_client_id: str = "switchyard-console",
        codes: CodeStore | None = None,
    ) -> None:
        self.issuer = issuer
        self.signing = signing
        self._tokens = _Tokens(issuer, audience, signing, token_ttl_s)
        self._server = _Server({client.client_id: client for client in clients})
        self._server.register_client_auth_method("client_secret_basic", _authenticate_basic)
        self._server.register_grant(ClientCredentialsGrant)
        self._server.register_token_generator("default", self._tokens)
        self._console = Client(console_client_id, "", SCOPES)
        self.authorizer = Authorizer(
            client_id=console_client_id,
            users=users or [],
            codes=codes or InProcessCodes(),
            issuer=issuer,
            scopes=SCOPES,
        )

    async def exchange_code(self, form: Mapping[str, str], authorized: bool) -> tuple[int, Any, dict[str, str]]:
        """The token endpoint's answer to `grant_type=authorization_code`: status, JSON body, headers."""
        try:
            user, scope = await self.authorizer.exchange(form, authorized)
        except TokenError as exc:
            return exc.status, {"error": exc.error, "error_description": exc.description}, exc.headers
        token: dict[str, Any] = self._tokens.generate(
            "authorization_code", self._console, user=user, scope=scope, include_refresh_token=False
        )
        return 200, token, {}

    def token(
        self, path: str, headers: Mapping[str, str], form: Mapping[str, str]
    ) -> tuple[int, Any, list[tuple[str, str]]]:
        """The token endpoint's answer: status, JSON body, headers (Cache-Control: no-store)."""
        result: tuple[int, Any, list[tuple[str, str]]] = self._server.create_token_response(
            _TokenRequest(path, headers, form)
        )
        return result

    async def aclose(self) -> None:
        await self.authorizer.aclose()

    def metadata(self, base_url: str) -> dict[str, Any]:
        """RFC 8414 authorization server metadata."""
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{base_url}/oauth/authorize",
            "token_endpoint": f"{base_url}/oauth/token",
            "jwks_uri": f"{base_url}/.well-known/jwks.json",
            "grant_types_supported": ["client_credentials", "authorization_code"],
            # `none`: the console, a public client, proves itself with PKCE instead of a secret
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "none"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": list(SCOPES),
            "response_types_supported": ["code"],
        }
