"""The authorization-code grant with PKCE (RFC 6749 §4.1, RFC 7636, S256 only) for one public
client: the console this gateway serves. People sign in on the built-in issuer's login page
as the configured users (`auth_users`); their user name is their tokens' subject.

The console's redirect URI is not registered but derived: `/console/callback` on the origin
the browser asked the authorization endpoint on (its Host header), over https whenever the
issuer is https. A link that names any other place is refused on the page, never followed,
so a code can only ever be delivered to the console of the gateway the person signed in to.

Errors found before the redirect URI is trusted (client id, redirect URI) are shown on the
page; later ones go back to the console with `error` and `state` (RFC 6749 §4.1.2.1).
"""

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from urllib.parse import urlencode, urlsplit

from app.auth.codes import CODE_TTL_S, CodeGrant, CodeStore, CodesUnavailable
from app.auth.secrets import hash_secret, new_secret, verify_secret
from app.settings import LOOPBACK_HOSTS

__all__ = [
    "CALLBACK_PATH",
    "AuthorizationRequest",
    "Authorizer",
    "PageError",
    "RedirectError",
    "TokenError",
    "User",
]

CALLBACK_PATH = "/console/callback"
_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")  # RFC 7636 §4.1
_S256_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")  # BASE64URL of a SHA-256, unpadded
_HOST = re.compile(r"[A-Za-z0-9.:\[\]-]{1,300}")  # a Host header's name and port, nothing else
_MAX_STATE_BYTES = 1024
_MAX_PASSWORD = 1024


@dataclass(frozen=True, slots=True)
class User:
    username: str
    password_hash: str
    scopes: tuple[str, ...]

    def get_user_id(self) -> str:  # authlib's token generator: the token's `sub`
        return self.username


class PageError(Exception):
    """A request that cannot be sent back to its client: shown on the page (400)."""


class RedirectError(Exception):
    """An error for the client, sent back to its redirect URI (RFC 6749 §4.1.2.1): `location`."""

    def __init__(self, location: str, error: str) -> None:
        super().__init__(error)
        self.location = location
        self.error = error


class TokenError(Exception):
    """The token endpoint's error for a code exchange (RFC 6749 §5.2)."""

    def __init__(self, status: int, error: str, description: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description
        self.headers = headers or {}


@dataclass(frozen=True, slots=True)
class AuthorizationRequest:
    client_id: str
    redirect_uri: str
    state: str
    code_challenge: str
    scope: tuple[str, ...]  # empty: whatever the user may have

    def fields(self) -> dict[str, str]:
        """The request's parameters, as the login form carries them to its POST."""
        return {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "state": self.state,
            "code_challenge": self.code_challenge,
            "code_challenge_method": "S256",
            "scope": " ".join(self.scope),
        }

    def redirect(self, **params: str) -> str:
        """Where the browser goes back to, with `params` and the client's state."""
        return f"{self.redirect_uri}?{urlencode(params | {'state': self.state})}"


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")


@cache
def _unknown_user() -> User:
    """Checked when the user name is unknown, so that a wrong name takes as long as a wrong password."""
    return User("", hash_secret(new_secret()), ())


class Authorizer:
    def __init__(
        self, *, client_id: str, users: list[User], codes: CodeStore, issuer: str, scopes: tuple[str, ...]
    ) -> None:
        self.client_id = client_id
        self._users = {user.username: user for user in users}
        self._codes = codes
        self._issuer = urlsplit(issuer)
        self._scopes = scopes

    def request(self, params: Mapping[str, str], host: str) -> AuthorizationRequest:
        """The authorization request in `params`, asked on `host` (the Host header): PageError
        while its redirect URI is not this console's, RedirectError after."""
        if params.get("client_id") != self.client_id:
            raise PageError("This page signs in to the console only: the link names another client.")
        redirect_uri = params.get("redirect_uri", "")
        if not self._is_console(redirect_uri, host):
            raise PageError("The link sends the sign-in to a place other than this gateway's console.")
        state = params.get("state", "")
        if not 0 < len(state.encode()) <= _MAX_STATE_BYTES:
            raise PageError("The link has no state (or one too long): open the console and sign in from it.")
        fields = AuthorizationRequest(redirect_uri=redirect_uri, client_id=self.client_id, state=state,
                                      code_challenge="", scope=())  # fmt: skip
        if params.get("response_type") != "code":
            raise _redirect_error(fields, "unsupported_response_type", "response_type must be code")
        if params.get("code_challenge_method") != "S256":
            raise _redirect_error(fields, "invalid_request", "code_challenge_method must be S256 (RFC 7636)")
        challenge = params.get("code_challenge", "")
        if not _S256_CHALLENGE.fullmatch(challenge):
            raise _redirect_error(fields, "invalid_request", "code_challenge must be 43 base64url characters")
        scope = tuple(dict.fromkeys(params.get("scope", "").split()))
        if unknown := [s for s in scope if s not in self._scopes]:
            raise _redirect_error(fields, "invalid_scope", f"unknown scope: {' '.join(unknown)}")
        return AuthorizationRequest(self.client_id, redirect_uri, state, challenge, scope)

    def _is_console(self, uri: str, host: str) -> bool:
        """`uri` is exactly this console's callback on `host`: compared whole, as a string (a
        parser forgives tabs, newlines and leading spaces that a browser would follow)."""
        if not _HOST.fullmatch(host):
            return False
        host = host.lower()
        return uri.lower() in {f"{scheme}://{host}{CALLBACK_PATH}" for scheme in self._schemes(host)}

    def _schemes(self, host: str) -> tuple[str, ...]:
        """https always; plain http only when the issuer is http and the browser is on this
        machine or on the issuer's own address (never a code over plain HTTP to a name that
        TLS is meant to front)."""
        if self._issuer.scheme != "http":
            return ("https",)
        try:
            on_loopback = urlsplit(f"//{host}").hostname in LOOPBACK_HOSTS  # the Host header's name, no port
        except ValueError:  # an unclosed `[`: no host at all
            return ("https",)
        return ("https", "http") if on_loopback or host == self._issuer.netloc.lower() else ("https",)

    def sign_in(self, username: str, password: str) -> User | None:
        """The user, when the password is theirs (scrypt: call it off the event loop)."""
        if len(password) > _MAX_PASSWORD:
            return None
        user = self._users.get(username)
        return user if verify_secret(password, (user or _unknown_user()).password_hash) else None

    async def grant(self, request: AuthorizationRequest, user: User) -> str:
        """Where the browser goes next: back to the console with a code for `user`, or with an
        error when the user may have none of the scopes asked for."""
        scope = [s for s in (request.scope or self._scopes) if s in user.scopes]
        if not scope:
            raise _redirect_error(request, "access_denied", f"{user.username} may use none of the scopes asked for")
        code = secrets.token_urlsafe(32)
        grant = CodeGrant(
            client_id=request.client_id,
            redirect_uri=request.redirect_uri,
            code_challenge=request.code_challenge,
            subject=user.username,
            scope=" ".join(scope),
            expires_at=time.time() + CODE_TTL_S,
        )
        try:
            await self._codes.put(code, grant)
        except CodesUnavailable:
            raise _redirect_error(request, "temporarily_unavailable", "sign-in is unavailable; try again") from None
        return request.redirect(code=code)

    async def exchange(self, form: Mapping[str, str], authorized: bool) -> tuple[User, str]:
        """The user and scope a code was issued for, checked against its client, redirect URI
        and verifier; the code is spent whatever the outcome (`authorized`: the request carried
        client credentials, which a public client has none of)."""
        if authorized:  # RFC 6749 §5.2: a 401 to credentials in the header names the scheme
            raise TokenError(401, "invalid_client", "The console is a public client: send no credentials.",
                             {"www-authenticate": 'Basic realm="switchyard"'})  # fmt: skip
        if form.get("client_id") != self.client_id:
            raise TokenError(401, "invalid_client", "The code grant is for the console, a public client.")
        verifier = form.get("code_verifier", "")
        if not _VERIFIER.fullmatch(verifier):
            raise TokenError(400, "invalid_request", "code_verifier must be 43 to 128 unreserved characters.")
        code = form.get("code", "")
        if not code:
            raise TokenError(400, "invalid_request", "Missing code.")
        try:
            grant = await self._codes.take(code)
        except CodesUnavailable:
            raise TokenError(503, "temporarily_unavailable", "Codes cannot be read now; sign in again.") from None
        if (
            grant is None
            or grant.client_id != self.client_id
            or grant.redirect_uri != form.get("redirect_uri")
            or not hmac.compare_digest(s256(verifier), grant.code_challenge)
        ):
            raise TokenError(400, "invalid_grant", "The code is unknown, spent, expired or not this client's.")
        user = self._users.get(grant.subject)
        scope = [s for s in grant.scope.split() if user is not None and s in user.scopes]
        if user is None or not scope:  # removed, or their scopes cut, since (a restart in between)
            raise TokenError(400, "invalid_grant", "The user is no longer configured with these scopes.")
        return user, " ".join(scope)

    async def aclose(self) -> None:
        await self._codes.aclose()


def _redirect_error(request: AuthorizationRequest, error: str, description: str) -> RedirectError:
    return RedirectError(request.redirect(error=error, error_description=description), error)
