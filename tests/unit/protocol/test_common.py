"""What chat and completion requests share: strict types, extra fields that travel on, and
every number bounded as OpenAI bounds it."""

import json

import pytest
from pydantic import ValidationError

from protocol import ChatCompletionRequest, CompletionRequest, describe_validation_error
from tests.unit.protocol.bodies import chat_body, completion_body, refusal

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


def test_strict_types_refuse_coercion() -> None:
    assert refusal(ChatCompletionRequest, chat_body(messages=[{"role": "user"}], max_tokens="5"))[1] == "max_tokens"
    assert refusal(ChatCompletionRequest, chat_body(messages=[{"role": "user"}], stream=1))[1] == "stream"


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


@pytest.mark.parametrize(("field", "value"), SHARED_OUT_OF_RANGE)
def test_shared_fields_out_of_range_name_themselves_in_both_kinds(field: str, value: object) -> None:
    message, param = refusal(ChatCompletionRequest, chat_body(**{field: value}))
    assert param == field
    assert message.startswith(f"Invalid value for '{field}'")
    assert refusal(CompletionRequest, completion_body(**{field: value}))[1] == field


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
@pytest.mark.parametrize("field", ["temperature", "top_p", "presence_penalty", "frequency_penalty"])
def test_non_finite_numbers_are_refused(field: str, literal: bytes) -> None:
    raw = json.dumps(chat_body()).encode()[:-1] + b', "' + field.encode() + b'": ' + literal + b"}"
    with pytest.raises(ValidationError) as caught:
        ChatCompletionRequest.model_validate_json(raw)
    assert describe_validation_error(caught.value)[1] == field


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
        json.dumps(chat_body(**edges, max_completion_tokens=1, top_logprobs=20, logprobs=False))
    )
    assert chat.seed == 2**63 - 1
    assert ChatCompletionRequest.model_validate_json(json.dumps(chat_body(seed=-(2**63)))).seed == -(2**63)
    completion = CompletionRequest.model_validate_json(
        json.dumps(completion_body(**edges, prompt=[0, 2**31 - 1], logprobs=5, best_of=20))
    )
    assert completion.single_prompt() == [0, 2**31 - 1]
