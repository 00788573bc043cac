"""A fake engine for unit tests: bytes as tokens, a scripted reply, no model.

Named as a fake and shipped beside the real engine, like httpx's MockTransport,
so the server layer can be tested without torch.
"""

import asyncio
from collections.abc import AsyncGenerator, Mapping, Sequence

from engines.base import AdapterNotFound, GenerationRequest, InvalidRequest, TokenChunk

__all__ = ["FakeEngine"]


class FakeEngine:
    def __init__(
        self,
        reply: str = "Hello from the fake engine.",
        *,
        model_name: str = "fake-model",
        max_model_len: int = 256,
        step_delay: float = 0.0,
        tokens_per_chunk: int = 1,
    ) -> None:
        self._reply = reply.encode()
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.vocab_size = 256  # a token is a byte
        self._step_delay = step_delay
        self._tokens_per_chunk = tokens_per_chunk
        self.num_running = 0
        self.num_waiting = 0
        self.requests: list[GenerationRequest] = []
        self.adapters: dict[str, str] = {}
        self.max_loras = 2

    def adapters_of(self, where: str) -> list[str]:
        return []

    async def load_adapter(self, name: str, path: str, *, replace: bool = False) -> None:
        if name in self.adapters and not replace:
            raise InvalidRequest(f"The lora adapter '{name}' has already been loaded.", "lora_name")
        self.adapters[name] = path

    async def unload_adapter(self, name: str) -> None:
        if self.adapters.pop(name, None) is None:
            raise AdapterNotFound(f"The lora adapter '{name}' cannot be found.", "lora_name")

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def encode_chat(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        return self.encode("".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>")

    def decode(self, token_ids: Sequence[int]) -> str:
        return bytes(token_ids).decode(errors="replace")

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenChunk, None]:
        self.requests.append(request)
        self.num_running += 1
        try:
            tokens = list(self._reply[: request.max_new_tokens])
            for start in range(0, len(tokens), self._tokens_per_chunk):
                await asyncio.sleep(self._step_delay)
                yield TokenChunk(tokens[start : start + self._tokens_per_chunk])
            yield TokenChunk((), "length" if len(tokens) == request.max_new_tokens else "stop")
        finally:
            self.num_running -= 1

    async def aclose(self) -> None:
        pass
