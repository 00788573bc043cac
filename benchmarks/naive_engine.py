"""The naive engine the benchmark compares against: Transformers' `generate()`, one request at a time.

`python -m benchmarks.naive_engine --model PATH --port P` serves it with the same
OpenAI server as the real engine, so only the generation strategy differs.
"""

import argparse
import asyncio
import threading
from collections.abc import AsyncGenerator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import uvicorn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.generation.streamers import BaseStreamer

from engines.base import GenerationRequest, InvalidRequest, TokenChunk
from engines.server.api import create_app


class _Cancelled(StoppingCriteria):
    def __init__(self, flag: threading.Event) -> None:
        self._flag = flag

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self._flag.is_set(), dtype=torch.bool)  # type: ignore[return-value]


class _Streamer(BaseStreamer):
    def __init__(self, deliver: Any) -> None:
        self._deliver = deliver
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if self._prompt_seen:
            self._deliver(TokenChunk([int(t) for t in value.reshape(-1).tolist()]))
        self._prompt_seen = True

    def end(self) -> None:
        pass


class NaiveEngine:
    def __init__(self, model: str, served_model_name: str) -> None:
        self._tokenizer = AutoTokenizer.from_pretrained(model)
        self._model = AutoModelForCausalLM.from_pretrained(model).eval()
        self.model_name = served_model_name
        self.max_model_len = int(self._model.config.max_position_embeddings)
        self.vocab_size = int(self._model.config.vocab_size)
        self.num_running = 0
        self.num_waiting = 0
        self.adapters: dict[str, str] = {}
        self.max_loras = 0
        self._executor = ThreadPoolExecutor(max_workers=1)
        self._slot = asyncio.Semaphore(1)

    def adapters_of(self, where: str) -> list[str]:
        return []

    async def load_adapter(self, name: str, path: str, *, replace: bool = False) -> None:
        raise InvalidRequest("the naive engine serves no adapters")

    async def unload_adapter(self, name: str) -> None:
        raise InvalidRequest("the naive engine serves no adapters")

    def encode(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def encode_chat(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        ids = self._tokenizer.apply_chat_template(
            [dict(m) for m in messages], add_generation_prompt=True, tokenize=True, return_dict=False
        )
        return [int(i) for i in ids]  # type: ignore[arg-type]

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(token_ids), skip_special_tokens=True))

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenChunk, None]:
        self.num_waiting += 1
        async with self._slot:
            self.num_waiting -= 1
            self.num_running += 1
            loop, queue, cancel = asyncio.get_running_loop(), asyncio.Queue[object](), threading.Event()

            def deliver(item: object) -> None:
                loop.call_soon_threadsafe(queue.put_nowait, item)

            def run() -> None:
                sample = request.temperature > 0
                config = GenerationConfig(
                    max_new_tokens=request.max_new_tokens,
                    do_sample=sample,
                    temperature=request.temperature if sample else None,
                    top_p=request.top_p if sample else None,
                    top_k=None,
                    eos_token_id=None,
                    pad_token_id=self._tokenizer.pad_token_id,
                )
                inputs = torch.tensor([list(request.prompt_ids)])
                with torch.inference_mode():
                    self._model.generate(
                        inputs,
                        attention_mask=torch.ones_like(inputs),
                        generation_config=config,
                        streamer=_Streamer(deliver),
                        stopping_criteria=StoppingCriteriaList([_Cancelled(cancel)]),
                    )
                deliver(TokenChunk((), "length"))

            work = loop.run_in_executor(self._executor, run)
            try:
                while True:
                    item = await queue.get()
                    assert isinstance(item, TokenChunk)
                    yield item
                    if item.finish_reason:
                        break
            finally:
                cancel.set()
                await asyncio.shield(work)
                self.num_running -= 1

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.naive_engine", description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = create_app(NaiveEngine(args.model, args.served_model_name))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
