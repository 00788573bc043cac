"""The bearer token of a request (RFC 6750 §2.1), from its `Authorization` header values.

Exactly one header is taken: two of them are ambiguous (a proxy may read the one we did
not), so they are refused as `invalid_request`, never resolved by picking one.
"""

import re
from collections.abc import Sequence

from oauth.errors import InvalidRequest, InvalidToken, MissingToken

__all__ = ["bearer_token"]

# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def bearer_token(authorization: Sequence[str]) -> str:
    """The token of the one `Authorization: Bearer <token>` header among `authorization` (every
    value the request sent, as Starlette's `headers.getlist("authorization")` gives them)."""
    if len(authorization) > 1:
        raise InvalidRequest("The request has more than one Authorization header; send exactly one.")
    if not authorization:
        raise MissingToken()
    scheme, _, token = authorization[0].strip(" \t").partition(" ")
    if scheme.lower() != "bearer":
        raise MissingToken("This endpoint takes an OAuth2 bearer access token (`Authorization: Bearer ...`).")
    token = token.strip(" \t")
    if not _B64TOKEN.fullmatch(token):
        raise InvalidToken("The bearer token is empty or malformed.")
    return token
