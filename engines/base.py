"""The engine interface every server-side engine implements.

An engine turns prompt token ids into a stream of generated token ids. Text,
stop strings and the OpenAI wire format are the server's business
(`engines.server`), so an engine stays small and a fake one is easy to write.

Errors (the HTTP status each becomes in `engines.server.errors`):

    EngineError
    ├── InvalidRequest (400): caused by the request; the engine is fine
    │   └── AdapterNotFound (404)
    ├── ModelNotFound (404)
    ├── EngineOverloaded (503 + Retry-After): busy, not broken
    └── EngineFault (500): the engine failed; the gateway may count it against the replica
        └── SequenceFault (500, code `sequence_failed`): one request failed while the batch went
            on, so most likely its own input did it: the gateway never counts it against the replica
"""

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

__all__ = [
    "AdapterNotFound",
    "Engine",
    "EngineError",
    "EngineFault",
    "EngineOverloaded",
    "SequenceFault",
    "GenerationRequest",
    "InvalidRequest",
    "ModelNotFound",
    "SelfChecking",
    "TokenChunk",
]

TokenFinish = Literal["stop", "length"]


class EngineError(Exception):
    """Base of the errors an engine raises for a request it cannot serve."""


class InvalidRequest(EngineError):
    """The request is malformed or asks for something this engine does not do (a 400)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class AdapterNotFound(InvalidRequest):
    """Unloading an adapter that is not loaded (a 404, as vLLM answers)."""


class EngineOverloaded(EngineError):
    """The engine's queue is full: answer 503 with Retry-After so the gateway can go elsewhere."""

    def __init__(self, retry_after_s: int = 1) -> None:
        super().__init__("The engine's queue is full; retry shortly or elsewhere.")
        self.retry_after_s = retry_after_s


class EngineFault(EngineError):
    """The engine failed to generate (a 500): its model, its worker, nothing the request did wrong."""


class SequenceFault(EngineFault):
    """One sequence failed and the rest of its batch did not: a fault of that request's making
    (an input no check foresaw), not of the replica's."""


class ModelNotFound(EngineError):
    """The request names a model this engine does not serve (a 404)."""

    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model}` does not exist.")


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    prompt_ids: Sequence[int]
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    adapter: str | None = None  # a loaded LoRA adapter's name; None for the base model


@dataclass(frozen=True, slots=True)
class TokenChunk:
    """Tokens produced since the previous chunk; the last chunk carries `finish_reason`.

    `"stop"` means the model emitted an end-of-sequence token (not included in
    `token_ids`); `"length"` means `max_new_tokens` was reached.
    """

    token_ids: Sequence[int]
    finish_reason: TokenFinish | None = None


class Engine(Protocol):
    @property
    def model_name(self) -> str: ...

    @property
    def max_model_len(self) -> int: ...

    @property
    def vocab_size(self) -> int:
        """Token ids from 0 to `vocab_size - 1` are the model's; a prompt with any other is refused."""
        ...

    @property
    def num_running(self) -> int: ...

    @property
    def num_waiting(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def encode_chat(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """Render the chat template with the generation prompt, and tokenize."""
        ...

    def decode(self, token_ids: Sequence[int]) -> str:
        """Text of `token_ids`, special tokens skipped."""
        ...

    @property
    def adapters(self) -> Mapping[str, str]:
        """Loaded LoRA adapters, name to path; clients select one by sending its name as `model`."""
        ...

    @property
    def max_loras(self) -> int: ...

    def adapters_of(self, where: str) -> list[str]:
        """Adapters of the `running` or `waiting` requests."""
        ...

    async def load_adapter(self, name: str, path: str, *, replace: bool = False) -> None: ...

    async def unload_adapter(self, name: str) -> None: ...

    def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenChunk, None]:
        """Stream tokens. Closing the iterator early stops the generation promptly.

        An engine with admission control admits (or raises EngineOverloaded) when
        this is called, before the stream is first read.
        """
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class SelfChecking(Protocol):
    """An engine that can tell it is broken; `/health` asks it (an engine without it is healthy while it answers)."""

    async def check_health(self) -> None:
        """Raise EngineFault if the engine cannot generate. Cheap unless something made it suspect."""
        ...
