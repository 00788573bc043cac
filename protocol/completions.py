"""`POST /v1/completions` (legacy text completion) wire models."""

from typing import Literal

from pydantic import BaseModel, Field

from protocol.common import FinishReason, SamplingParams, Usage

__all__ = ["Completion", "CompletionChoice", "CompletionRequest"]


class CompletionRequest(SamplingParams):
    # One prompt per request: a string or its token ids (a one-element list of either is accepted).
    prompt: str | list[int] | list[str] | list[list[int]] = Field(min_length=1)
    echo: bool = False

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
