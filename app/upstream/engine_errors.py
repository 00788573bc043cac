"""Engines' error answers in the gateway's envelope, whatever shape each engine uses.

vLLM answers `{"error": {"type": "BadRequestError", "code": 400, ...}}` (older
releases: the fields at the top level); clients expect OpenAI's types and string
codes, so the SDK raises the same exception whichever engine served the request.
"""

import json
import re
from typing import Any

from protocol import error_payload

__all__ = ["normalize_error"]

_OPENAI_TYPE = re.compile(r"^[a-z]+(_[a-z]+)*_error$")


def normalize_error(status: int, body: bytes) -> bytes:
    error = _error_fields(body)
    message = error.get("message")
    if not isinstance(message, str) or not message:
        message = f"The engine answered HTTP {status}."
    type_ = error.get("type")
    if not isinstance(type_, str) or not _OPENAI_TYPE.match(type_):
        type_ = "invalid_request_error" if status < 500 else "server_error"
    param, code = error.get("param"), error.get("code")
    return json.dumps(
        error_payload(
            message,
            type_,
            param=param if isinstance(param, str) else None,
            code=code if isinstance(code, str) else None,
        )
    ).encode()


def _error_fields(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except ValueError:
        return {}
    if not isinstance(payload, dict):
        return {}
    nested = payload.get("error")
    if isinstance(nested, dict):
        return nested
    return payload
