"""The proxy's small parts: an engine's Retry-After, and where the last whole SSE event ends."""

import pytest

from app.pipeline.proxy import _events_end, retry_after_s


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("2", 2.0), ("0.5", 0.5), ("0", 0.0), (None, None), ("soon", None), ("-1", None), ("99999", None)],
)
def test_retry_after_seconds(value: str | None, seconds: float | None) -> None:
    assert retry_after_s({} if value is None else {"retry-after": value}) == seconds


@pytest.mark.parametrize(
    ("data", "end"),
    [
        (b"", 0),
        (b"data: a", 0),
        (b"data: a\n\n", 9),
        (b"data: a\n\ndata: b", 9),
        (b"data: a\n\ndata: b\n\n", 18),
        (b"data: a\r\n\r\ndata: b", 11),
    ],
)
def test_sse_event_boundaries(data: bytes, end: int) -> None:
    assert _events_end(data) == end
