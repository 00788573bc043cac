"""A Transformers causal LM behind the engine interface, with continuous batching.

The model runs on the scheduler's worker thread (`engines.transformers.scheduler`);
this class tokenizes, hands sequences over and turns the tokens the scheduler
delivers into an async stream. Closing the stream cancels the sequence, which
leaves the batch before the next decode step.
"""

import asyncio
import logging
import weakref
from collections.abc import AsyncGenerator, Mapping, Sequence
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from engines.base import EngineFault, GenerationRequest, InvalidRequest, TokenChunk
from engines.transformers.adapters import AdapterStore
from engines.transformers.scheduler import Scheduler, SequenceState

__all__ = ["TransformersEngine", "resolve_model"]

log = logging.getLogger(__name__)

# The canary waits for the decode step under way, then runs a few tokens' prefill: far below
# this on any device that works. The gateway's probe (2 s by default) may give up sooner.
CANARY_TIMEOUT_S = 5.0


class TransformersEngine:
    def __init__(
        self,
        model: str,
        *,
        served_model_name: str,
        max_model_len: int | None = None,
        max_batch_size: int = 32,
        max_waiting: int = 128,
        max_loras: int = 8,
        max_lora_rank: int = 64,
        canary_timeout_s: float = CANARY_TIMEOUT_S,
    ) -> None:
        self._tokenizer = AutoTokenizer.from_pretrained(model)
        loaded: PreTrainedModel = AutoModelForCausalLM.from_pretrained(model, dtype="auto")
        loaded.eval()
        self._model_name = served_model_name
        limit = getattr(loaded.config, "max_position_embeddings", None) or 2048
        self._max_model_len = min(max_model_len, limit) if max_model_len else int(limit)
        # Both the embedding (`config.vocab_size` rows) and the tokenizer must know an id: an
        # embedding is often padded past the tokenizer's last id, and echo decodes the prompt.
        self._vocab_size = min(int(loaded.config.vocab_size), len(self._tokenizer))
        eos = loaded.generation_config.eos_token_id
        if eos is None:
            eos = self._tokenizer.eos_token_id
        eos_ids = frozenset([eos] if isinstance(eos, int) else (eos or []))
        adapters = AdapterStore(loaded, max_loras=max_loras, max_lora_rank=max_lora_rank)
        self._scheduler = Scheduler(adapters, eos_ids=eos_ids, max_batch_size=max_batch_size, max_waiting=max_waiting)
        self._canary_ids = self.encode("Hello") or [0]
        self._canary_timeout_s = canary_timeout_s
        self._canary: asyncio.Future[None] | None = None  # the one in flight: probes arriving meanwhile share it
        self._canary_failed = False
        self._scheduler.start()

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def num_running(self) -> int:
        return self._scheduler.num_running

    @property
    def num_waiting(self) -> int:
        return self._scheduler.num_waiting

    @property
    def adapters(self) -> Mapping[str, str]:
        """Loaded LoRA adapters: name to path."""
        return self._scheduler.adapters.paths()

    @property
    def max_loras(self) -> int:
        return self._scheduler.adapters.max_loras

    def adapters_of(self, where: str) -> list[str]:
        return self._scheduler.adapters_of(where)

    async def load_adapter(self, name: str, path: str, *, replace: bool = False) -> None:
        store = self._scheduler.adapters
        await asyncio.wrap_future(
            self._scheduler.call(lambda: store.load(name, path, in_use=self._scheduler.in_use(), replace=replace))
        )

    async def unload_adapter(self, name: str) -> None:
        await asyncio.wrap_future(self._scheduler.call(lambda: self._scheduler.adapters.unload(name)))

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def encode_chat(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        if not self._tokenizer.chat_template:
            raise InvalidRequest("this model has no chat template; use /v1/completions", "messages")
        try:
            ids = self._tokenizer.apply_chat_template(
                [dict(m) for m in messages], add_generation_prompt=True, tokenize=True, return_dict=False
            )
        except Exception as exc:  # the template itself refuses the conversation (jinja raise)
            raise InvalidRequest(f"the chat template rejected the messages: {exc}", "messages") from exc
        return [int(i) for i in ids]  # type: ignore[arg-type]  # a flat list when tokenize and not return_dict

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(token_ids), skip_special_tokens=True))

    def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenChunk, None]:
        """Queue the sequence now (EngineOverloaded at once if the queue is full), stream its tokens later."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()

        def deliver(item: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop has closed: nobody is listening any more
                sequence.cancel.set()

        sequence = SequenceState(request, deliver)
        self._scheduler.submit(sequence)
        stream = self._stream(sequence, queue)
        # A stream dropped before its first read never runs its `finally`: cancel it when collected.
        weakref.finalize(stream, sequence.cancel.set)
        return stream

    async def _stream(
        self, sequence: SequenceState, queue: "asyncio.Queue[object]"
    ) -> AsyncGenerator[TokenChunk, None]:
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, TokenChunk)
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            sequence.cancel.set()
            self._scheduler.wake()

    async def check_health(self) -> None:
        """Raise EngineFault when the engine, made suspect by a sequence failing alone, fails its canary."""
        if not self._scheduler.suspect:
            return
        if self._canary is None or self._canary.done():
            self._canary = asyncio.wrap_future(self._scheduler.call(lambda: self._scheduler.canary(self._canary_ids)))
            # Read here too: a canary that fails after its probe gave up is not an unretrieved exception.
            self._canary.add_done_callback(lambda done: done.cancelled() or done.exception())
        try:
            # Shielded: a probe that times out leaves the canary to finish for the next one.
            await asyncio.wait_for(asyncio.shield(self._canary), self._canary_timeout_s)
        except Exception as exc:
            reason = f"no answer in {self._canary_timeout_s} s" if isinstance(exc, TimeoutError) else repr(exc)
            if not self._canary_failed:  # once per outage: the gateway probes every few seconds
                log.error("the engine failed its canary (%s): /health answers 503 until it passes", reason)
            self._canary_failed = True
            raise EngineFault(f"The engine failed its health check: {reason}.") from exc
        if self._canary_failed:
            log.info("the engine passed its canary again")
        self._canary_failed = False

    async def aclose(self) -> None:
        await asyncio.to_thread(self._scheduler.stop)


def resolve_model(model: str) -> str:
    """A local folder as an absolute path; anything else is a hub id, left as given."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model
