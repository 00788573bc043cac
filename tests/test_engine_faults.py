"""Faults injected into the Transformers engine's scheduler stay with the sequence that caused them.

In-process on the built-in model: the scheduler's forward pass and sampling are wrapped
so that one chosen sequence fails, and every other sequence of the same batch must
generate exactly what it generates alone.
"""

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from engines.base import EngineFault, GenerationRequest, InvalidRequest, SequenceFault
from engines.transformers.engine import TransformersEngine
from engines.transformers.scheduler import Scheduler, SequenceState

POISON = [7, 7, 7, 7, 7, 7, 7]  # the prompt the injected faults pick out
FAULT_SEED = 666  # the sampling fault picks out this seed


@pytest.fixture
async def engine(builtin_model: Path) -> AsyncIterator[TransformersEngine]:
    engine = TransformersEngine(str(builtin_model), served_model_name="m", max_batch_size=8, max_waiting=16)
    yield engine
    await engine.aclose()


def _scheduler(engine: TransformersEngine) -> Scheduler:
    return engine._scheduler  # the faults are injected where the model runs


def _requests(engine: TransformersEngine) -> list[GenerationRequest]:
    prompts = ["Hello", "A longer prompt that pads the others on the left", "def f(a, b):"]
    return [GenerationRequest(engine.encode(p), max_new_tokens=40, temperature=0) for p in prompts]


async def _collect(engine: TransformersEngine, request: GenerationRequest, delay: float = 0.0) -> list[int]:
    await asyncio.sleep(delay)
    tokens: list[int] = []
    async for chunk in engine.generate(request):
        tokens.extend(chunk.token_ids)
    return tokens


async def _alone(engine: TransformersEngine, requests: list[GenerationRequest]) -> list[list[int]]:
    return [await _collect(engine, r) for r in requests]


def _inject_forward(
    engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch, fails: Callable[[list[SequenceState], bool], bool]
) -> None:
    scheduler = _scheduler(engine)
    forward = scheduler._forward

    def faulty(sequences: list[SequenceState], **inputs: Any) -> Any:
        if fails(list(sequences), inputs.get("past_key_values") is None):
            raise RuntimeError("injected fault")
        return forward(sequences, **inputs)

    monkeypatch.setattr(scheduler, "_forward", faulty)


async def test_a_failing_prefill_fails_only_its_sequence(
    engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    requests = _requests(engine)
    expected = await _alone(engine, requests)
    _inject_forward(engine, monkeypatch, lambda seqs, prefill: prefill and list(seqs[0].request.prompt_ids) == POISON)
    poisoned = GenerationRequest(POISON, max_new_tokens=40, temperature=0)
    # The poisoned sequence joins a batch that is already decoding, next to one that joins with it.
    together = asyncio.gather(
        *(_collect(engine, r) for r in requests[:2]),
        _collect(engine, poisoned, delay=0.05),
        _collect(engine, requests[2], delay=0.05),
        return_exceptions=True,
    )
    first, second, failed, joined_with_it = await together
    assert isinstance(failed, SequenceFault), failed  # the gateway never counts it against the replica
    assert "prefill" in str(failed)
    assert [first, second, joined_with_it] == expected
    assert any(r.exc_info and "prefill" in r.getMessage() for r in caplog.records), "logged with its traceback"


async def test_an_out_of_vocabulary_prompt_that_reaches_the_batch_fails_alone(engine: TransformersEngine) -> None:
    """The server refuses such prompts first; the scheduler still confines the embedding's IndexError."""
    requests = _requests(engine)
    expected = await _alone(engine, requests)
    bad = GenerationRequest([1, 2, 99999999], max_new_tokens=5, temperature=0)
    results = await asyncio.gather(
        *(_collect(engine, r) for r in requests), _collect(engine, bad, delay=0.05), return_exceptions=True
    )
    assert isinstance(results[-1], SequenceFault)
    assert list(results[:-1]) == expected


async def test_a_failing_sampling_step_fails_only_its_sequence(
    engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = _requests(engine)
    expected = await _alone(engine, requests)
    sample_row = Scheduler._sample_row
    calls = 0

    def faulty(logits: torch.Tensor, request: GenerationRequest, generator: torch.Generator | None, greedy: int) -> int:
        nonlocal calls
        if request.seed == FAULT_SEED:
            calls += 1
            if calls == 3:  # after two tokens have reached the client
                raise RuntimeError("injected sampling fault")
        return sample_row(logits, request, generator, greedy)

    monkeypatch.setattr(_scheduler(engine), "_sample_row", faulty)
    victim = GenerationRequest(engine.encode("victim"), max_new_tokens=40, temperature=1.0, seed=FAULT_SEED)
    received: list[int] = []

    async def victim_stream() -> None:
        async for chunk in engine.generate(victim):
            received.extend(chunk.token_ids)

    *others, failed = await asyncio.gather(
        *(_collect(engine, r) for r in requests), victim_stream(), return_exceptions=True
    )
    assert isinstance(failed, EngineFault)
    assert "sampling" in str(failed)
    assert len(received) == 2
    assert others == expected


async def test_a_failing_decode_step_fails_the_batch_and_the_engine_serves_on(
    engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    requests = _requests(engine)
    expected = await _alone(engine, requests)
    broken = True
    _inject_forward(engine, monkeypatch, lambda seqs, prefill: broken and not prefill and len(seqs) == 3)
    results = await asyncio.gather(*(_collect(engine, r) for r in requests), return_exceptions=True)
    assert all(isinstance(r, EngineFault) for r in results), results
    assert any(r.exc_info and "decode step failed" in r.getMessage() for r in caplog.records)
    broken = False
    assert await _alone(engine, requests) == expected


@pytest.mark.parametrize("seed", [2**64, -(2**63) - 1, 2**200])
async def test_a_seed_torch_cannot_take_is_refused_before_queueing(engine: TransformersEngine, seed: int) -> None:
    with pytest.raises(InvalidRequest) as refused:
        engine.generate(GenerationRequest(engine.encode("x"), max_new_tokens=2, temperature=1.0, seed=seed))
    assert refused.value.param == "seed"
    assert (engine.num_running, engine.num_waiting) == (0, 0)
