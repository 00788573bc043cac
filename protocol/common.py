"""Parts shared by the chat and legacy completion wire models.

Every number a client sends is bounded here, as OpenAI bounds it, so a value no
engine can take (a seed beyond 64 bits, a token id beyond 32) is a 400 naming the
field at the edge, in the gateway and in the engine alike, never a 500 from deep inside.
"""

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

FinishReason = Literal["stop", "length"]

MAX_STOP_SEQUENCES = 4
# Seeds are 64-bit signed integers (OpenAI's, vLLM's and torch's `manual_seed` all take them).
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1
# Token ids and token counts are 32-bit signed integers in every engine's tensors.
INT32_MAX = 2**31 - 1
LOGIT_BIAS_LIMIT = 100.0

TokenId = Annotated[int, Field(ge=0, le=INT32_MAX)]
TokenCount = Annotated[int, Field(ge=1, le=INT32_MAX)]
_LogitBias = Annotated[float, Field(ge=-LOGIT_BIAS_LIMIT, le=LOGIT_BIAS_LIMIT, allow_inf_nan=False)]
_TOKEN_ID_KEY = re.compile(r"[0-9]{1,10}")


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    include_usage: bool = False


class SamplingParams(BaseModel):
    """Fields every generation request takes.

    Strict: a string where a number belongs is a 400, not a silent coercion.
    Extra fields are kept so engine-specific parameters travel through the gateway.
    """

    model_config = ConfigDict(strict=True, extra="allow")

    model: str = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    max_tokens: TokenCount | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)
    n: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2, allow_inf_nan=False)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2, allow_inf_nan=False)
    logit_bias: dict[str, _LogitBias] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    def token_limit(self) -> int | None:
        """The most completion tokens the request may produce, when it says."""
        return self.max_tokens

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int | None) -> int | None:
        if n is not None and n != 1:
            raise ValueError("only n=1 is supported: one choice per request")
        return n

    @field_validator("stop")
    @classmethod
    def _bounded_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list):
            if len(stop) > MAX_STOP_SEQUENCES:
                raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
            if any(not s for s in stop):
                raise ValueError("stop sequences must be non-empty")
        return stop

    @field_validator("logit_bias")
    @classmethod
    def _token_id_keys(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        for key in bias or {}:
            if not _TOKEN_ID_KEY.fullmatch(key) or int(key) > INT32_MAX:
                raise ValueError(f"keys must be token ids (integers from 0 to {INT32_MAX}), not {key[:20]!r}")
        return bias

    def stop_sequences(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def include_usage_in_stream(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


_USAGE_FIELDS = {
    name: re.compile(rb'"' + name.encode() + rb'"\s*:\s*(\d+)') for name in ("completion_tokens", "total_tokens")
}


def usage_count(body: bytes, field: Literal["completion_tokens", "total_tokens"]) -> int | None:
    """`usage.<field>` of a whole answer's JSON, found without parsing it (the usage comes last)."""
    found = _USAGE_FIELDS[field].search(body, max(0, body.rfind(b'"' + field.encode() + b'"')))
    return int(found.group(1)) if found else None
