"""Reading and validating client request bodies, before anything reaches an engine."""

from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from app.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from protocol import describe_validation_error

__all__ = ["parse_body", "read_json_body"]

M = TypeVar("M", bound=BaseModel)

_JSON_TYPES = ("application/json", "")


async def read_json_body(request: Request, limit: int) -> bytes:
    """The raw body of a JSON request, refusing other media types and bodies over `limit` bytes."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type not in _JSON_TYPES and not media_type.endswith("+json"):
        raise UnsupportedMediaType(f"Content-Type must be application/json, not `{media_type}`.")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    return bytes(body)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is over the limit of {limit} bytes.")


def parse_body(body: bytes, model: type[M]) -> M:
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        message, param = describe_validation_error(exc)
        raise InvalidRequest(message, param=param) from None
