"""A request's routing key (app/api/keys.py): the session header, else the user, else the head
of the prompt, so one conversation or one prompt's prefix stays on one replica."""

from app.api.keys import routing_key_of
from protocol import ChatCompletionRequest, CompletionRequest


def _chat(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]} | fields
    )


def test_session_header_then_user_then_prompt() -> None:
    by_session = routing_key_of({"x-session-id": "s1"}, _chat(user="alice"))
    assert by_session.startswith("session:")
    assert by_session == routing_key_of({"x-session-id": "s1"}, _chat(user="bob"))
    assert routing_key_of({}, _chat(user="alice")).startswith("user:")
    assert routing_key_of({}, _chat()).startswith("prompt:")


def test_prompt_key_is_the_system_prompt_and_first_user_turn() -> None:
    first = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    later = [*first, {"role": "assistant", "content": "hi"}, {"role": "user", "content": "more"}]
    assert routing_key_of({}, _chat(messages=first)) == routing_key_of({}, _chat(messages=later))
    other_system = [{"role": "system", "content": "be verbose"}, {"role": "user", "content": "hello"}]
    assert routing_key_of({}, _chat(messages=other_system)) != routing_key_of({}, _chat(messages=first))
    assert routing_key_of({}, _chat(model="adapter", messages=first)) != routing_key_of({}, _chat(messages=first))


def test_completion_keys() -> None:
    text = CompletionRequest.model_validate({"model": "m", "prompt": "x" * 2000})
    same_head = CompletionRequest.model_validate({"model": "m", "prompt": "x" * 1500})
    tokens = CompletionRequest.model_validate({"model": "m", "prompt": [1, 2, 3]})
    assert routing_key_of({}, text) == routing_key_of({}, same_head)
    assert routing_key_of({}, tokens) != routing_key_of({}, text)
    assert routing_key_of({"x-session-id": "s"}, text).startswith("session:")
