"""Reading a client's request body: each parse error becomes a BadRequest (or TooLarge) where it happens.

JSON is read with every integer bounded and without NaN or Infinity (what no peer or operator
sends, and what would only be refused later, after the work of converting it).
"""

import json
from pathlib import Path
from typing import Any, NoReturn

from fastapi import Request

from sync.errors import BadRequest, TooLarge

__all__ = ["integer", "json_body", "number", "receive_file"]


class _NotJson(ValueError):
    """What this sidecar does not read as JSON, though Python's parser would."""


def _no_constant(constant: str) -> NoReturn:
    raise _NotJson(f"{constant} is not a JSON number")


def _bounded_int(text: str) -> int:
    # Every integer here fits int64; longer ones would only be refused later, after Python had
    # converted all their digits.
    if len(text.lstrip("-")) > 19:
        raise _NotJson(f"an integer of {len(text.lstrip('-'))} digits")
    return int(text)


async def json_body(request: Request, limit: int) -> Any:
    """The body as JSON: TooLarge past `limit` bytes, BadRequest if it is not JSON this sidecar reads."""
    body = await request.body()
    if len(body) > limit:
        raise TooLarge(len(body), limit)
    try:
        return json.loads(body, parse_constant=_no_constant, parse_int=_bounded_int)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None
    except UnicodeDecodeError:
        raise BadRequest("the body is not JSON: not UTF-8") from None
    except RecursionError:
        raise BadRequest("the body is not JSON this sidecar reads: nested too deeply") from None
    except _NotJson as exc:
        raise BadRequest(f"the body is not JSON this sidecar reads: {exc}") from None


async def receive_file(request: Request, path: Path, limit: int) -> Path:
    """The request's body into `path`, streamed; TooLarge past `limit` bytes."""
    size = 0
    with path.open("wb") as file:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise TooLarge(size, limit)
            file.write(chunk)
    return path


def integer(text: str, param: str) -> int:
    """A query parameter as a whole number; BadRequest naming `param` if it is not one."""
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise BadRequest(f"Invalid value for '{param}': {text[:64]!r} is not a whole number.", param=param)
    return int(text)


def number(text: str, param: str) -> float:
    """A query parameter as a number; BadRequest naming `param` if it is not one."""
    try:
        return float(text)
    except ValueError:
        raise BadRequest(f"Invalid value for '{param}': {text[:64]!r} is not a number.", param=param) from None
