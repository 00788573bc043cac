"""The Transformers engine's scheduler, in process on the built-in model.

Continuous batching: sequences that join a batch mid-flight decode as if alone, seeded sampling
does not depend on the neighbours, a cancelled sequence leaves the batch, a full queue refuses
at once, and a long request does not hold a short one back.

Faults stay with the sequence that caused them: the scheduler's forward pass and sampling are
wrapped so that one chosen sequence fails, and every other sequence of the same batch must
generate exactly what it generates alone. And a broken engine is still found: when every
forward fails, each sequence fails alone, and `/health` answers 503.
"""

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM

from engines.base import EngineFault, EngineOverloaded, GenerationRequest, InvalidRequest, SequenceFault
from engines.server.api import create_app
from engines.transformers.engine import TransformersEngine
from engines.transformers.scheduler import FAILURES_BEFORE_ALARM, Scheduler, SequenceState

POISON = [7, 7, 7, 7, 7, 7, 7]  # the prompt the injected faults pick out
FAULT_SEED = 666  # the sampling fault picks out this seed
PROMPTS = ["Hello", "A much longer prompt that pads the others on the left", "x", "def f(a, b):\n    return"]


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


async def _alone(engine: TransformersEngine, requests: list[GenerationRequest]) -> list[list[int]]:
    return [await _collect(engine, r) for r in requests]


# --- continuous batching


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


# --- faults stay with the sequence that caused them


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


# --- a broken engine is found: a sequence failing alone makes the engine suspect, and while it is
# --- suspect /health runs a canary (a tiny prompt's prefill) and answers 503 if it fails


@pytest.fixture
async def health(engine: TransformersEngine) -> AsyncIterator[Callable[[], Awaitable[httpx.Response]]]:
    app = create_app(engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://engine") as http:

        async def probe() -> httpx.Response:
            return await http.get("/health")

        yield probe


async def test_a_poisoned_sequence_leaves_the_engine_healthy(
    engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch, health: Callable[[], Awaitable[httpx.Response]]
) -> None:
    forwards = 0

    def poisoned(seqs: list[SequenceState], prefill: bool) -> bool:
        nonlocal forwards
        forwards += 1
        return prefill and list(seqs[0].request.prompt_ids) == POISON

    _inject_forward(engine, monkeypatch, poisoned)
    with pytest.raises(SequenceFault):
        await _collect(engine, GenerationRequest(POISON, max_new_tokens=4, temperature=0))
    assert _scheduler(engine).suspect, "a sequence failing alone leaves the engine suspect"
    before = forwards
    assert (await health()).status_code == 200  # the canary passes: the input was to blame
    assert forwards == before + 1, "the canary ran one forward pass"
    assert not _scheduler(engine).suspect
    assert (await health()).status_code == 200
    assert forwards == before + 1, "no canary while nothing is suspect"


async def test_a_successful_forward_clears_the_suspicion(
    engine: TransformersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _inject_forward(engine, monkeypatch, lambda seqs, prefill: prefill and list(seqs[0].request.prompt_ids) == POISON)
    with pytest.raises(SequenceFault):
        await _collect(engine, GenerationRequest(POISON, max_new_tokens=4, temperature=0))
    assert _scheduler(engine).suspect
    await _collect(engine, _requests(engine)[0])
    assert not _scheduler(engine).suspect


async def test_an_engine_whose_every_forward_fails_answers_503_on_health(
    engine: TransformersEngine,
    monkeypatch: pytest.MonkeyPatch,
    health: Callable[[], Awaitable[httpx.Response]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    requests = _requests(engine)
    expected = await _alone(engine, requests[:1])
    broken = True
    _inject_forward(engine, monkeypatch, lambda seqs, prefill: broken)
    for _ in range(FAILURES_BEFORE_ALARM):
        with pytest.raises(SequenceFault):  # each alone looks like its request's fault ...
            await _collect(engine, requests[0])
    # ... but so many in a row, with nothing succeeding, are said to be the engine's.
    assert sum("the engine itself may be broken" in r.getMessage() for r in caplog.records) == 1
    for _ in range(3):
        answer = await health()
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "engine_unhealthy"
        assert answer.json()["error"]["type"] == "server_error"
        assert "injected fault" in answer.json()["error"]["message"]
    canary_logs = [r for r in caplog.records if "failed its canary" in r.getMessage()]
    assert len(canary_logs) == 1, "logged once per outage, not per probe"
    broken = False  # repaired: the gateway's next probe brings the replica back
    assert (await health()).status_code == 200
    assert await _alone(engine, requests[:1]) == expected


async def test_a_hung_forward_fails_the_canary_within_its_timeout(
    builtin_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = TransformersEngine(str(builtin_model), served_model_name="m", canary_timeout_s=0.3)
    release = threading.Event()
    hang = False
    scheduler = _scheduler(engine)
    forward = scheduler._forward

    def faulty(sequences: list[SequenceState], **inputs: Any) -> Any:
        if list(sequences[0].request.prompt_ids) == POISON:
            raise RuntimeError("injected fault")
        if hang:
            release.wait(30)
        return forward(sequences, **inputs)

    monkeypatch.setattr(scheduler, "_forward", faulty)
    app = create_app(engine)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://engine") as http:
            with pytest.raises(SequenceFault):
                await _collect(engine, GenerationRequest(POISON, max_new_tokens=4, temperature=0))
            hang = True
            started = time.monotonic()
            answer = await http.get("/health")
            assert answer.status_code == 503
            assert "no answer in 0.3 s" in answer.json()["error"]["message"]
            assert time.monotonic() - started < 5
            hang = False
            release.set()  # the canary in flight finishes, and the next probe shares its result
            assert (await http.get("/health")).status_code == 200
    finally:
        release.set()
        await engine.aclose()


async def test_a_call_whose_caller_gave_up_is_skipped_and_the_scheduler_lives_on(engine: TransformersEngine) -> None:
    scheduler = _scheduler(engine)
    with scheduler._wake:  # the worker cannot take the call before it is cancelled
        abandoned = scheduler.call(lambda: 1)
        assert abandoned.cancel()
    assert await asyncio.wait_for(asyncio.wrap_future(scheduler.call(lambda: 42)), 10) == 42
    assert await _collect(engine, _requests(engine)[0])
