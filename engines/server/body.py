"""A request's JSON body as a protocol model; a body that fails it is an InvalidRequest naming the field."""

from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from engines.base import InvalidRequest
from protocol import describe_validation_error

__all__ = ["parse"]

M = TypeVar("M", bound=BaseModel)


async def parse(request: Request, model: type[M]) -> M:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        message, param = describe_validation_error(exc)
        raise InvalidRequest(message, param) from None
