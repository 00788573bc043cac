"""A client's id and secret from `Authorization: Basic ...` at the token endpoint, strictly.

RFC 6749 §2.3.1: the id and the secret are each form-urlencoded (Appendix B: `+` is a space,
`%XX` a byte of UTF-8), joined by a colon, base64-encoded (RFC 7617). Anything else (another
scheme, bad base64, bytes that are not UTF-8, no colon, a stray `%`, an empty id or secret)
is not a credential: None, which the issuer answers with 401 `invalid_client`.
"""

import base64
import binascii
import re
from urllib.parse import unquote_plus

__all__ = ["basic_credentials"]

_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def basic_credentials(authorization: str) -> tuple[str, str] | None:
    """(client id, secret) from one `Authorization` header value; None unless it is well-formed Basic."""
    scheme, _, encoded = authorization.strip(" \t").partition(" ")
    encoded = encoded.strip(" \t")
    if scheme.lower() != "basic" or not encoded or not _BASE64.fullmatch(encoded):
        return None
    try:
        pair = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, colon, secret = pair.partition(":")
    if not colon:
        return None
    try:
        decoded = [_form_decoded(client_id), _form_decoded(secret)]
    except ValueError:  # UnicodeDecodeError included
        return None
    if not all(decoded):
        return None
    return decoded[0], decoded[1]


def _form_decoded(value: str) -> str:
    if _STRAY_PERCENT.search(value):
        raise ValueError("a % that starts no escape")
    return unquote_plus(value, encoding="utf-8", errors="strict")
