"""Request bodies for the wire-model tests, and what a refused one says."""

import json

import pytest
from pydantic import ValidationError

from protocol import ChatCompletionRequest, CompletionRequest, describe_validation_error

__all__ = ["chat_body", "completion_body", "refusal"]


def chat_body(**fields: object) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": "x"}], **fields}


def completion_body(**fields: object) -> dict[str, object]:
    return {"model": "m", "prompt": "x", **fields}


def refusal(model: type[ChatCompletionRequest | CompletionRequest], body: object) -> tuple[str, str | None]:
    """The message and param a client gets for `body` (bytes are sent as they are), which must be refused."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(ValidationError) as caught:
        model.model_validate_json(raw)
    return describe_validation_error(caught.value)
