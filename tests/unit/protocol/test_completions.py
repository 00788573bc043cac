"""`POST /v1/completions` requests: the forms of one prompt, and the bounds of the legacy fields."""

import json

import pytest

from protocol import CompletionRequest
from tests.unit.protocol.bodies import completion_body, refusal

# (field, a value just outside OpenAI's bounds) for the fields only completion requests have.
COMPLETION_OUT_OF_RANGE: list[tuple[str, object]] = [
    ("prompt", [1, -1]),
    ("prompt", [2**31]),
    ("prompt", [[0, -1]]),
    ("prompt", [2**64]),
    ("logprobs", -1),
    ("logprobs", 6),
    ("best_of", 0),
    ("best_of", 21),
]


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


@pytest.mark.parametrize(("field", "value"), COMPLETION_OUT_OF_RANGE)
def test_completion_fields_out_of_range_name_themselves(field: str, value: object) -> None:
    assert refusal(CompletionRequest, completion_body(**{field: value}))[1] == field
