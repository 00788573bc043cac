"""An engine's error body in the OpenAI envelope, whichever engine (and version) answered it."""

import json

import pytest

from app.upstream.engine_errors import normalize_error


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (  # vLLM 0.32
            400,
            {"error": {"message": "too long", "type": "BadRequestError", "param": "max_tokens", "code": 400}},
            {"message": "too long", "type": "invalid_request_error", "param": "max_tokens", "code": None},
        ),
        (  # older vLLM: fields at the top level
            404,
            {"object": "error", "message": "The model `x` does not exist.", "type": "NotFoundError", "code": 404},
            {"message": "The model `x` does not exist.", "type": "invalid_request_error", "param": None, "code": None},
        ),
        (  # already OpenAI-shaped: unchanged
            404,
            {"error": {"message": "m", "type": "invalid_request_error", "param": "model", "code": "model_not_found"}},
            {"message": "m", "type": "invalid_request_error", "param": "model", "code": "model_not_found"},
        ),
        (500, "Internal Server Error", {"message": "The engine answered HTTP 500.", "type": "server_error"}),
    ],
)
def test_error_bodies_are_normalized(status: int, body: object, expected: dict[str, object]) -> None:
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    error = json.loads(normalize_error(status, raw))["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert {k: error[k] for k in expected} == expected
