"""A request's id: the client's when it is sane, else one of the gateway's own."""

import pytest

from app.context import request_id


@pytest.mark.parametrize("given", ["caf\u00e9", "", "x" * 129, "tab\there"])
def test_a_request_id_the_gateway_cannot_pass_on_as_it_is_gets_replaced(given: str) -> None:
    """Only visible ASCII goes back out and on to the engine: anything else is replaced."""
    headers = [(b"x-request-id", given.encode("latin-1"))]
    assert request_id(headers) != given
    assert request_id(headers).isascii()


def test_a_sane_request_id_is_kept() -> None:
    assert request_id([(b"x-request-id", b"req-42.a_b")]) == "req-42.a_b"
