"""`POST /v1/completions` (legacy text completion) wire models."""

from typing import Literal

from pydantic import BaseModel, Field

from protocol.common import FinishReason, SamplingParams, TokenId, Usage

__all__ = ["Completion", "CompletionChoice", "CompletionRequest"]

# The legacy API's bounds: log probabilities of at most 5 tokens, at most 20 candidates.
MAX_LOGPROBS = 5
MAX_BEST_OF = 20


class CompletionRequest(SamplingParams):
    # One prompt per request: a string or its token ids (a one-element list of either is accepted).
    prompt: str | list[TokenId] | list[str] | list[list[TokenId]] = Field(min_length=1)
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    best_of: int | None = Field(default=None, ge=1, le=MAX_BEST_OF)

    def single_prompt(self) -> str | list[int]:
        """The one prompt; raises ValueError for a batch, which this API does not serve."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return prompt
        if all(isinstance(p, int) for p in prompt):
            return [int(p) for p in prompt]  # type: ignore[arg-type]
        if len(prompt) != 1:
            raise ValueError("one prompt per request: send a string or a list of token ids")
        only = prompt[0]
        return only if isinstance(only, str) else list(only)  # type: ignore[arg-type]


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: FinishReason | None
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
