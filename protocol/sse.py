"""Server-sent events framing as OpenAI streams it: `data: <json>\\n\\n`, then `data: [DONE]`."""

import json
from typing import Any

DONE_EVENT = b"data: [DONE]\n\n"


def sse_event(payload: Any) -> bytes:
    """One SSE event carrying `payload` as compact JSON."""
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
