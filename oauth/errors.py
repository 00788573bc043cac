"""A resource server's refusals, each with its HTTP status and RFC 6750 §3.1 error code.

OAuthError
├── MissingToken        401 (no error code: no bearer token was sent)
├── InvalidToken        401 invalid_token
├── InvalidRequest      400 invalid_request (credentials that cannot be read one way)
└── InsufficientScope   403 insufficient_scope

`challenge(realm)` is the `WWW-Authenticate` value to answer with. The message is meant
for the client: it never holds the token or anything read from it.
"""

__all__ = ["InsufficientScope", "InvalidRequest", "InvalidToken", "MissingToken", "OAuthError"]


class OAuthError(Exception):
    status = 401
    error: str | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def challenge(self, realm: str) -> str:
        """RFC 6750 §3: the scheme, the realm and the error code (none when no token was sent)."""
        if self.error is None:
            return f'Bearer realm="{_quoted(realm)}"'
        return f'Bearer realm="{_quoted(realm)}", error="{self.error}", error_description="{_quoted(self.message)}"'


class MissingToken(OAuthError):
    def __init__(self, message: str = "This endpoint needs an OAuth2 bearer access token.") -> None:
        super().__init__(message)


class InvalidToken(OAuthError):
    error = "invalid_token"


class InvalidRequest(OAuthError):
    status = 400
    error = "invalid_request"


class InsufficientScope(OAuthError):
    status = 403
    error = "insufficient_scope"

    def __init__(self, *scopes: str) -> None:
        needed = " or ".join(f"`{scope}`" for scope in scopes)
        super().__init__(f"The access token lacks the scope {needed} this endpoint needs.")
        self.scope = " ".join(scopes)  # RFC 6750 §3: space-delimited

    def challenge(self, realm: str) -> str:
        return f'Bearer realm="{_quoted(realm)}", error="{self.error}", scope="{_quoted(self.scope)}"'


def _quoted(text: str) -> str:
    """Safe inside a quoted-string of a header: no quotes, backslashes or control characters."""
    return "".join(c for c in text if c.isprintable() and c.isascii()).replace("\\", "").replace('"', "'")
