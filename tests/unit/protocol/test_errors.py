"""The messages clients get for bad requests: the field named as a path, the reason in words."""

from protocol import ChatCompletionRequest, CompletionRequest
from tests.unit.protocol.bodies import completion_body, refusal


def _describe(body: object) -> tuple[str, str | None]:
    return refusal(ChatCompletionRequest, body)


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


def test_a_negative_token_id_is_described_by_its_bound_not_by_every_union_member() -> None:
    message, _ = refusal(CompletionRequest, completion_body(prompt=[1, 2, -3]))
    assert message == "Invalid value for 'prompt': Input should be greater than or equal to 0."
