"""Continuous batching in the Transformers engine, in-process on the built-in model."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from engines.base import EngineOverloaded, GenerationRequest
from engines.transformers.engine import TransformersEngine

PROMPTS = ["Hello", "A much longer prompt that pads the others on the left", "x", "def f(a, b):\n    return"]


@pytest.fixture
async def engine(builtin_model: Path) -> AsyncIterator[TransformersEngine]:
    engine = TransformersEngine(str(builtin_model), served_model_name="m", max_batch_size=8, max_waiting=16)
    yield engine
    await engine.aclose()


def _reference(builtin_model: Path, prompt_ids: list[int], n: int) -> list[int]:
    tokenizer = AutoTokenizer.from_pretrained(builtin_model)
    model = LlamaForCausalLM.from_pretrained(builtin_model)
    inputs = torch.tensor([prompt_ids])
    with torch.inference_mode():
        output = model.generate(  # type: ignore[misc]  # transformers types `self` as a Protocol
            inputs,
            attention_mask=torch.ones_like(inputs),
            do_sample=False,
            max_new_tokens=n,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=None,
        )
    return [int(t) for t in output[0][len(prompt_ids) :]]


async def _collect(engine: TransformersEngine, request: GenerationRequest, delay: float = 0.0) -> list[int]:
    await asyncio.sleep(delay)
    tokens: list[int] = []
    async for chunk in engine.generate(request):
        tokens.extend(chunk.token_ids)
    return tokens


async def test_sequences_joining_mid_flight_decode_as_if_alone(engine: TransformersEngine, builtin_model: Path) -> None:
    prompts = [engine.encode(p) for p in PROMPTS]
    requests = [GenerationRequest(ids, max_new_tokens=24 + 8 * i, temperature=0) for i, ids in enumerate(prompts)]
    # Staggered starts: later sequences join a batch that is already decoding.
    batched = await asyncio.gather(*(_collect(engine, r, delay=0.01 * i) for i, r in enumerate(requests)))
    for request, tokens in zip(requests, batched, strict=True):
        assert tokens == _reference(builtin_model, list(request.prompt_ids), request.max_new_tokens)


async def test_seeded_sampling_does_not_depend_on_neighbours(engine: TransformersEngine) -> None:
    request = GenerationRequest(engine.encode("seeded"), max_new_tokens=16, temperature=0.9, top_p=0.9, seed=11)
    alone = await _collect(engine, request)
    noise = [GenerationRequest(engine.encode(p), max_new_tokens=20, temperature=1.0) for p in PROMPTS]
    together = await asyncio.gather(_collect(engine, request), *(_collect(engine, r) for r in noise))
    assert together[0] == alone


# Long requests are seeded: unseeded sampling from a random model may reach end-of-sequence early.


async def test_a_cancelled_sequence_leaves_the_batch(engine: TransformersEngine) -> None:
    long = GenerationRequest(engine.encode("long"), max_new_tokens=1500, temperature=1.0, seed=7)
    stream = engine.generate(long)
    await anext(stream)
    assert engine.num_running == 1
    await stream.aclose()
    for _ in range(100):
        if engine.num_running == 0:
            break
        await asyncio.sleep(0.01)
    assert engine.num_running == 0


async def test_a_full_queue_refuses_at_once(builtin_model: Path) -> None:
    engine = TransformersEngine(str(builtin_model), served_model_name="m", max_batch_size=1, max_waiting=1)
    try:
        busy = engine.generate(GenerationRequest(engine.encode("a"), max_new_tokens=1000, temperature=1.0, seed=7))
        await anext(busy)  # running
        waiting = engine.generate(GenerationRequest(engine.encode("b"), max_new_tokens=5))
        waiting_task = asyncio.ensure_future(anext(waiting))
        await asyncio.sleep(0.05)
        assert (engine.num_running, engine.num_waiting) == (1, 1)
        with pytest.raises(EngineOverloaded):
            await anext(engine.generate(GenerationRequest(engine.encode("c"), max_new_tokens=5)))
        await busy.aclose()
        await waiting_task
        await waiting.aclose()
    finally:
        await engine.aclose()


async def test_a_long_request_does_not_hold_a_short_one_back(engine: TransformersEngine) -> None:
    long = engine.generate(GenerationRequest(engine.encode("long"), max_new_tokens=1500, temperature=1.0, seed=7))
    await anext(long)
    short = await _collect(engine, GenerationRequest(engine.encode("short"), max_new_tokens=5, temperature=0))
    assert len(short) == 5
    still = await anext(long)
    assert still.finish_reason is None, "the short request finished while the long one still runs"
    await long.aclose()
