"""Reading a compact JWS's header before anything is trusted: bounded, and unable to crash.

Everything here reads attacker-controlled bytes, so every way the standard library can fail
on them (bad base64, bad UTF-8, bad JSON, integers past `sys.int_max_str_digits`, nesting
past the recursion limit) ends as `InvalidToken`. Nesting is bounded before `json.loads`
sees the text: 1,500 nested brackets would otherwise raise `RecursionError`.
"""

import base64
import json
import re
from typing import Any

from oauth.errors import InvalidToken

__all__ = ["MAX_HEADER_BRACKETS", "PARSE_ERRORS", "read_header"]

# Everything json.loads, base64 and a JOSE library raise on hostile input (ValueError covers
# binascii.Error, UnicodeDecodeError and JSONDecodeError).
PARSE_ERRORS = (ValueError, TypeError, RecursionError, OverflowError, KeyError, IndexError, AttributeError)

# A JWS header is a flat object with at most a few small members (`crit`, `jwk`, `x5c`):
# one with more brackets than this, nested or not, is refused unread. Counting runs in C,
# and it keeps json.loads's recursion far below the interpreter's limit.
MAX_HEADER_BRACKETS = 32

# RFC 7515 §2: unpadded base64url. `urlsafe_b64decode` alone would skip stray characters,
# and a length of 4n+1 holds no whole byte.
_SEGMENT = re.compile(r"(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{2,3})?")

_NOT_A_JWS = "The access token is not a signed JWT (three base64url segments)."


def read_header(token: str) -> dict[str, Any]:
    """The unverified header of `token`, a compact JWS of three non-empty base64url segments."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts) or not all(_SEGMENT.fullmatch(part) for part in parts):
        raise InvalidToken(_NOT_A_JWS)
    header = parts[0]
    try:
        document = base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))
    except PARSE_ERRORS:
        raise InvalidToken(_NOT_A_JWS) from None
    if document.count(b"[") + document.count(b"{") > MAX_HEADER_BRACKETS:
        raise InvalidToken("The access token's header is nested too deeply.")
    try:
        value = json.loads(document)
    except PARSE_ERRORS:
        raise InvalidToken("The access token's header is not base64url-encoded JSON.") from None
    if not isinstance(value, dict):
        raise InvalidToken("The access token's header is not a JSON object.")
    return value
