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


def _chat(**fields: object) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": "x"}], **fields}


def _completion(**fields: object) -> dict[str, object]:
    return {"model": "m", "prompt": "x", **fields}


# (field, a value just outside OpenAI's bounds): both request kinds share these fields.
SHARED_OUT_OF_RANGE: list[tuple[str, object]] = [
    ("seed", 2**63),
    ("seed", -(2**63) - 1),
    ("seed", 2**64),
    ("temperature", -0.01),
    ("temperature", 2.01),
    ("top_p", -0.01),
    ("top_p", 1.01),
    ("presence_penalty", -2.01),
    ("presence_penalty", 2.01),
    ("frequency_penalty", -2.01),
    ("frequency_penalty", 2.01),
    ("max_tokens", 0),
    ("max_tokens", 2**31),
    ("n", 0),
    ("n", 2),
    ("logit_bias", {"1": 100.5}),
    ("logit_bias", {"1": -101}),
    ("logit_bias", {"1": "5"}),
    ("logit_bias", {"x": 1}),
    ("logit_bias", {"-1": 1}),
    ("logit_bias", {" 1": 1}),
    ("logit_bias", {"2147483648": 1}),
    ("stop", ["a", "b", "c", "d", "e"]),
]
CHAT_OUT_OF_RANGE: list[tuple[str, object]] = [
    ("max_completion_tokens", 0),
    ("max_completion_tokens", 2**31),
    ("top_logprobs", -1),
    ("top_logprobs", 21),
    ("logprobs", 1),
]
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


def _refused(model: type[ChatCompletionRequest | CompletionRequest], body: dict[str, object]) -> tuple[str, str | None]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate_json(json.dumps(body))
    return describe_validation_error(caught.value)


@pytest.mark.parametrize(("field", "value"), SHARED_OUT_OF_RANGE + CHAT_OUT_OF_RANGE)
def test_chat_fields_out_of_range_name_themselves(field: str, value: object) -> None:
    message, param = _refused(ChatCompletionRequest, _chat(**{field: value}))
    assert param == field
    assert message.startswith(f"Invalid value for '{field}'")


@pytest.mark.parametrize(("field", "value"), SHARED_OUT_OF_RANGE + COMPLETION_OUT_OF_RANGE)
def test_completion_fields_out_of_range_name_themselves(field: str, value: object) -> None:
    assert _refused(CompletionRequest, _completion(**{field: value}))[1] == field


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
@pytest.mark.parametrize("field", ["temperature", "top_p", "presence_penalty", "frequency_penalty"])
def test_non_finite_numbers_are_refused(field: str, literal: bytes) -> None:
    raw = json.dumps(_chat()).encode()[:-1] + b', "' + field.encode() + b'": ' + literal + b"}"
    with pytest.raises(ValidationError) as caught:
        ChatCompletionRequest.model_validate_json(raw)
    assert describe_validation_error(caught.value)[1] == field


def test_a_negative_token_id_is_described_by_its_bound_not_by_every_union_member() -> None:
    message, _ = _refused(CompletionRequest, _completion(prompt=[1, 2, -3]))
    assert message == "Invalid value for 'prompt': Input should be greater than or equal to 0."


def test_the_bounds_themselves_are_accepted() -> None:
    edges = {
        "seed": 2**63 - 1,
        "temperature": 2,
        "top_p": 0,
        "presence_penalty": -2,
        "frequency_penalty": 2,
        "max_tokens": 2**31 - 1,
        "logit_bias": {"0": -100, "2147483647": 100},
        "stop": ["a", "b", "c", "d"],
        "n": 1,
    }
    chat = ChatCompletionRequest.model_validate_json(
        json.dumps(_chat(**edges, max_completion_tokens=1, top_logprobs=20, logprobs=False))
    )
    assert chat.seed == 2**63 - 1
    assert ChatCompletionRequest.model_validate_json(json.dumps(_chat(seed=-(2**63)))).seed == -(2**63)
    completion = CompletionRequest.model_validate_json(
        json.dumps(_completion(**edges, prompt=[0, 2**31 - 1], logprobs=5, best_of=20))
    )
    assert completion.single_prompt() == [0, 2**31 - 1]
