"""Server-sent events framing as OpenAI streams it: `data: <json>\\n\\n`, then `data: [DONE]`."""

import json
from typing import Any

DONE_EVENT = b"data: [DONE]\n\n"

# An event stream's response headers: no cache keeps it, and no proxy (nginx) buffers it.
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def sse_event(payload: Any) -> bytes:
    """One SSE event carrying `payload` as compact JSON."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
