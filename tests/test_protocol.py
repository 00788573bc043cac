"""Validation of the wire models and the messages clients get for bad requests."""

import json

import pytest
from pydantic import ValidationError

from protocol import ChatCompletionRequest, CompletionRequest, describe_validation_error


def _describe(body: object) -> tuple[str, str | None]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(ValidationError) as caught:
        ChatCompletionRequest.model_validate_json(raw)
    return describe_validation_error(caught.value)


def test_missing_field_is_named() -> None:
    message, param = _describe({"model": "m"})
    assert param == "messages"
    assert message == "Missing required parameter: 'messages'."


def test_nested_location_reads_like_a_path() -> None:
    _, param = _describe({"model": "m", "messages": [{"role": "user", "content": "x"}, {"role": "bot"}]})
    assert param == "messages[1].role"


def test_union_members_are_not_part_of_the_param() -> None:
    message, param = _describe({"model": "m", "messages": [{"role": "user"}], "stop": 3})
    assert param == "stop"
    assert "valid string" in message
    assert "valid array" in message


def test_invalid_json_and_non_objects() -> None:
    assert _describe(b"{nope")[1] is None
    assert "JSON object" in _describe([1])[0]


def test_strict_types_refuse_coercion() -> None:
    assert _describe({"model": "m", "messages": [{"role": "user"}], "max_tokens": "5"})[1] == "max_tokens"
    assert _describe({"model": "m", "messages": [{"role": "user"}], "stream": 1})[1] == "stream"


def test_integers_are_accepted_as_floats() -> None:
    request = ChatCompletionRequest.model_validate_json(
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 1}'
    )
    assert request.temperature == 1.0


def test_extra_fields_travel_on() -> None:
    request = ChatCompletionRequest.model_validate_json(
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "top_k": 5}'
    )
    assert request.model_extra == {"top_k": 5}


def test_max_completion_tokens_supersedes_max_tokens() -> None:
    request = ChatCompletionRequest.model_validate_json(
        b'{"model": "m", "messages": [{"role": "user"}], "max_tokens": 9, "max_completion_tokens": 4}'
    )
    assert request.token_limit() == 4


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [("text", "text"), ([1, 2], [1, 2]), (["only"], "only"), ([[3, 4]], [3, 4])],
)
def test_single_prompt_forms(prompt: object, expected: object) -> None:
    request = CompletionRequest.model_validate_json(json.dumps({"model": "m", "prompt": prompt}))
    assert request.single_prompt() == expected


def test_prompt_batches_are_refused() -> None:
    request = CompletionRequest.model_validate_json(json.dumps({"model": "m", "prompt": ["a", "b"]}))
    with pytest.raises(ValueError, match="one prompt"):
        request.single_prompt()
