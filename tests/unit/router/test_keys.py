"""The routing key: by session, else user, else the prompt's head; a digest, safe to log."""

from router import routing_key


def test_routing_keys() -> None:
    by_session = routing_key(model="m", session_id="abc", user="u", prompt_head="p")
    assert by_session.startswith("session:")
    assert routing_key(model="m", session_id=None, user="u", prompt_head="p").startswith("user:")
    assert routing_key(model="m", session_id=None, user=None, prompt_head="p").startswith("prompt:")
    assert routing_key(model="adapter", session_id="abc", user=None, prompt_head="") != by_session
    long_head = "x" * 1024
    assert routing_key(model="m", session_id=None, user=None, prompt_head=long_head + "tail") == routing_key(
        model="m", session_id=None, user=None, prompt_head=long_head + "other"
    )
    assert "abc" not in by_session  # only a digest: safe to log
