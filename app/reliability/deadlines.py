"""Every request carries a deadline: the client's timeout when it sends one, else a default.

`x-request-timeout` (seconds) is ours; `x-stainless-timeout` is what the OpenAI SDKs send
with their own client timeout, so SDK users get deadlines without doing anything.
"""

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

from app.errors import InvalidRequest

__all__ = ["TIMEOUT_HEADERS", "Deadline"]

TIMEOUT_HEADERS = ("x-request-timeout", "x-stainless-timeout")


@dataclass(frozen=True, slots=True)
class Deadline:
    at: float  # time.monotonic() by which the answer must be complete

    @classmethod
    def from_headers(cls, headers: Mapping[str, str], *, default_s: float, max_s: float) -> "Deadline":
        seconds = default_s
        for name in TIMEOUT_HEADERS:
            value = headers.get(name)
            if value is None:
                continue
            try:
                seconds = float(value)
            except ValueError:
                seconds = math.nan
            if not math.isfinite(seconds) or seconds <= 0:
                raise InvalidRequest(f"`{name}` must be a positive number of seconds, not `{value}`.", param=name)
            break
        return cls(time.monotonic() + min(seconds, max_s))

    def remaining(self) -> float:
        return self.at - time.monotonic()

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0
