"""A Transformers causal LM behind the engine interface.

Generation runs on one worker thread, one request at a time, so the event loop
never blocks; requests beyond the running one wait their turn and are counted
as waiting. Each generation calls Transformers' own `generate()`, so greedy
output is exactly `generate()`'s. Tokens reach the event loop through a
streamer as they are produced, and a stopping criterion watches a cancel flag,
so closing the stream stops the model at its next step.
"""

import asyncio
import threading
from collections.abc import AsyncGenerator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

from engines.base import GenerationRequest, InvalidRequest, TokenChunk, TokenFinish

__all__ = ["TransformersEngine"]

_END = object()


class _Cancelled(StoppingCriteria):
    def __init__(self, flag: threading.Event) -> None:
        self._flag = flag

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self._flag.is_set(), dtype=torch.bool)  # type: ignore[return-value]


class _LoopStreamer(BaseStreamer):
    """Hands each new token to the event loop; holds back end-of-sequence tokens."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        queue: "asyncio.Queue[object]",
        eos_ids: frozenset[int],
        cancel: threading.Event,
    ) -> None:
        self._loop = loop
        self._queue = queue
        self._eos_ids = eos_ids
        self._cancel = cancel
        self._prompt_seen = False
        self.count = 0
        self.ended_on_eos = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first echoes the prompt
            self._prompt_seen = True
            return
        token_ids = [int(t) for t in value.reshape(-1).tolist()]
        self.count += len(token_ids)
        if token_ids and token_ids[-1] in self._eos_ids:
            self.ended_on_eos = True
            token_ids = token_ids[:-1]
        if token_ids:
            self.send(TokenChunk(token_ids))

    def end(self) -> None:
        pass

    def send(self, item: object) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop has closed: nobody is listening any more
            self._cancel.set()


class TransformersEngine:
    def __init__(self, model: str, *, served_model_name: str, max_model_len: int | None = None) -> None:
        self._tokenizer = AutoTokenizer.from_pretrained(model)
        loaded: PreTrainedModel = AutoModelForCausalLM.from_pretrained(model, dtype="auto")
        self._model = loaded.eval()
        self._model_name = served_model_name
        limit = getattr(self._model.config, "max_position_embeddings", None) or 2048
        self._max_model_len = min(max_model_len, limit) if max_model_len else int(limit)
        eos = self._model.generation_config.eos_token_id
        if eos is None:
            eos = self._tokenizer.eos_token_id
        self._eos_ids = frozenset([eos] if isinstance(eos, int) else (eos or []))
        pad = self._tokenizer.pad_token_id
        self._pad_id = pad if pad is not None else next(iter(self._eos_ids), 0)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        self._slot = asyncio.Semaphore(1)
        self._running = 0
        self._waiting = 0

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def max_model_len(self) -> int:
        return self._max_model_len

    @property
    def num_running(self) -> int:
        return self._running

    @property
    def num_waiting(self) -> int:
        return self._waiting

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

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenChunk, None]:
        self._waiting += 1
        try:
            await self._slot.acquire()
        finally:
            self._waiting -= 1
        self._running += 1
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancel = threading.Event()
        try:
            work = loop.run_in_executor(self._executor, self._generate_blocking, request, loop, queue, cancel)
        except BaseException:
            self._release()
            raise
        # The slot frees when the thread really ends, not when the caller stops listening:
        # the running gauge then tells the truth about the model's work.
        work.add_done_callback(lambda _: self._release())
        try:
            while True:
                item = await queue.get()
                if isinstance(item, TokenChunk):
                    yield item
                    if item.finish_reason is not None:
                        return
                elif isinstance(item, BaseException):
                    raise item
                elif item is _END:
                    return
        finally:
            cancel.set()

    def _release(self) -> None:
        self._running -= 1
        self._slot.release()

    def _generate_blocking(
        self,
        request: GenerationRequest,
        loop: asyncio.AbstractEventLoop,
        queue: "asyncio.Queue[object]",
        cancel: threading.Event,
    ) -> None:
        streamer = _LoopStreamer(loop, queue, self._eos_ids, cancel)
        try:
            if cancel.is_set():
                return
            if request.seed is not None:
                torch.manual_seed(request.seed)  # safe: one generation at a time on this thread
            sample = request.temperature > 0
            config = GenerationConfig(
                max_new_tokens=request.max_new_tokens,
                do_sample=sample,
                temperature=request.temperature if sample else None,
                top_p=request.top_p if sample else None,
                top_k=None,
                eos_token_id=sorted(self._eos_ids) or None,
                pad_token_id=self._pad_id,
            )
            input_ids = torch.tensor([list(request.prompt_ids)], dtype=torch.long)
            with torch.inference_mode():
                self._model.generate(
                    input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    generation_config=config,
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_Cancelled(cancel)]),
                )
            finish: TokenFinish | None = None
            if streamer.ended_on_eos:
                finish = "stop"
            elif streamer.count >= request.max_new_tokens:
                finish = "length"
            streamer.send(TokenChunk((), finish) if finish else _END)
        except Exception as exc:
            streamer.send(exc)

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def resolve_model(model: str) -> str:
    """A local folder as an absolute path; anything else is a hub id, left as given."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model
