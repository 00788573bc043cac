"""`POST /v1/chat/completions` requests: the token limit, and the bounds of chat's own fields."""

import pytest

from protocol import ChatCompletionRequest
from tests.unit.protocol.bodies import chat_body, refusal

# (field, a value just outside OpenAI's bounds) for the fields only chat requests have.
CHAT_OUT_OF_RANGE: list[tuple[str, object]] = [
    ("max_completion_tokens", 0),
    ("max_completion_tokens", 2**31),
    ("top_logprobs", -1),
    ("top_logprobs", 21),
    ("logprobs", 1),
]


def test_max_completion_tokens_supersedes_max_tokens() -> None:
    request = ChatCompletionRequest.model_validate_json(
        b'{"model": "m", "messages": [{"role": "user"}], "max_tokens": 9, "max_completion_tokens": 4}'
    )
    assert request.token_limit() == 4


@pytest.mark.parametrize(("field", "value"), CHAT_OUT_OF_RANGE)
def test_chat_fields_out_of_range_name_themselves(field: str, value: object) -> None:
    message, param = refusal(ChatCompletionRequest, chat_body(**{field: value}))
    assert param == field
    assert message.startswith(f"Invalid value for '{field}'")
