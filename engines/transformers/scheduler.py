"""Continuous (iteration-level) batching on one worker thread.

Between two decode steps, waiting sequences are prefilled and join the batch,
and finished or cancelled ones leave it, so a long request never holds short
ones back. The model runs only on this thread: the event loop never blocks,
and tokens reach it through each sequence's `deliver` callback.

A failure is confined to what caused it: one sequence's prefill or sampling
failing ends that sequence only (the rest of the batch keeps generating); only a
decode step, which runs the whole batch at once, fails the batch.

A sequence failing alone is most likely its own input's doing, but a broken model
or device fails every prefill alone too, and then no batch ever fails. So such a
failure leaves the engine *suspect* until a forward pass succeeds again (anyone's
prefill, a decode step, or the canary that `/health` runs while suspect: a tiny
fixed prompt's prefill, `canary`). A poisoned input passes the canary and changes
nothing; a broken engine fails it, and the gateway's probe takes it out of rotation.
"""

import collections
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from engines.base import (
    EngineError,
    EngineFault,
    EngineOverloaded,
    GenerationRequest,
    InvalidRequest,
    ModelNotFound,
    SequenceFault,
    TokenChunk,
    TokenFinish,
)
from engines.transformers.adapters import BASE, AdapterStore
from engines.transformers.batch import BatchCache

T = TypeVar("T")

__all__ = ["Scheduler", "SequenceState"]

log = logging.getLogger(__name__)

# Below this temperature sampling is greedy, as in vLLM: dividing logits by a tinier one overflows.
_GREEDY_BELOW = 1e-5

# Sequences failing alone in a row, with no forward pass succeeding between them, before the
# log says the engine itself may be broken (each failure is logged on its own as well).
FAILURES_BEFORE_ALARM = 5


@dataclass(eq=False)
class SequenceState:
    request: GenerationRequest
    deliver: Callable[[object], None]  # thread-safe: a TokenChunk or an exception
    cancel: threading.Event = field(default_factory=threading.Event)
    generator: torch.Generator | None = None
    generated: int = 0
    last_token: int = 0
    finished: bool = False

    def __post_init__(self) -> None:
        """Raises InvalidRequest for a seed torch cannot take, before the sequence is queued."""
        if self.request.seed is not None:
            try:
                self.generator = torch.Generator().manual_seed(self.request.seed)
            except (RuntimeError, ValueError, OverflowError):
                raise InvalidRequest(
                    f"Invalid value for 'seed': {self.request.seed} does not fit in 64 bits.", "seed"
                ) from None

    @property
    def done(self) -> bool:
        return self.finished or self.cancel.is_set()


class Scheduler:
    def __init__(
        self, adapters: AdapterStore, *, eos_ids: frozenset[int], max_batch_size: int, max_waiting: int
    ) -> None:
        self.adapters = adapters
        self._tasks: collections.deque[tuple[Callable[[], Any], Future[Any]]] = collections.deque()
        self._eos_ids = eos_ids
        self._max_batch_size = max_batch_size
        self._max_waiting = max_waiting
        self._pending: collections.deque[SequenceState] = collections.deque()
        self._running: list[SequenceState] = []
        self._joining: list[SequenceState] = []  # taken from the queue, not yet prefilled: counted as running
        self._batch = BatchCache()
        self._wake = threading.Condition()
        self._stopping = False
        self._failures_in_a_row = 0  # sequences failed alone since the last forward that succeeded
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)

    @property
    def num_running(self) -> int:
        return len(self._running) + len(self._joining)

    @property
    def num_waiting(self) -> int:
        return len(self._pending)

    @property
    def suspect(self) -> bool:
        """A sequence failed alone and no forward pass has succeeded since."""
        return self._failures_in_a_row > 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()

    def submit(self, sequence: SequenceState) -> None:
        """Queue a sequence; refuses at once when the batch is full and so is the queue."""
        with self._wake:
            free_slots = max(0, self._max_batch_size - self.num_running)
            if len(self._pending) >= self._max_waiting + free_slots:
                raise EngineOverloaded()
            self._pending.append(sequence)
            self._wake.notify()

    def adapters_of(self, where: str) -> list[str]:
        """Adapters of the `running` or `waiting` sequences (for vLLM's lora_requests_info)."""
        with self._wake:  # the queue changes under this lock only
            sequences = list(self._running) if where == "running" else list(self._pending)
        return sorted({s.request.adapter for s in sequences if s.request.adapter})

    def call(self, work: Callable[[], T]) -> "Future[T]":
        """Run `work` on the scheduler's thread between two decode steps."""
        future: Future[T] = Future()
        with self._wake:
            if self._stopping:
                raise EngineError("the engine is shutting down")
            self._tasks.append((work, future))
            self._wake.notify()
        return future

    def in_use(self) -> set[str]:
        """Adapters that a running or waiting sequence needs; never evicted."""
        with self._wake:
            sequences = [*self._running, *self._pending]
        return {s.request.adapter for s in sequences if s.request.adapter}

    def wake(self) -> None:
        """Let an idle loop notice a cancellation."""
        with self._wake:
            self._wake.notify()

    # --- the worker thread ----------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._stopping or self._pending or self._running or self._tasks):
                    self._wake.wait()
                if self._stopping:
                    break
                tasks = list(self._tasks)
                self._tasks.clear()
                room = self._max_batch_size - len(self._running)
                self._joining = [self._pending.popleft() for _ in range(min(room, len(self._pending)))]
            for work, future in tasks:
                if not future.set_running_or_notify_cancel():  # its caller gave up waiting
                    continue
                try:
                    future.set_result(work())
                except Exception as exc:
                    future.set_exception(exc)
            try:
                with torch.inference_mode():
                    for sequence in list(self._joining):
                        try:
                            self._prefill(sequence)
                        except Exception as exc:  # this sequence's own failure: it alone ends
                            self._fail_one(sequence, exc, "prefill")
                    self._retire()
                    if self._running:
                        self._decode()
                        self._retire()
            except Exception:  # the batch's forward failed: an engine fault; fail the batch, keep serving
                failed = [*self._running, *self._joining]
                log.exception("a decode step failed; failing the %d sequences of the batch", len(failed))
                self._fail(failed, EngineFault("The engine failed while generating; retry the request."))
                self._running, self._joining = [], []
                self._batch.clear()
        self._fail([*self._running, *self._pending], EngineError("the engine is shutting down"))
        for _, future in self._tasks:
            if future.set_running_or_notify_cancel():
                future.set_exception(EngineError("the engine is shutting down"))

    def _forward(self, sequences: Sequence[SequenceState], **inputs: Any) -> Any:
        if self.adapters.mixed:  # PEFT routes each row through its own adapter, or none
            inputs["adapter_names"] = [s.request.adapter or BASE for s in sequences]
        output = self.adapters.model(**inputs, use_cache=True)
        self._failures_in_a_row = 0  # the model works: whatever failed before was its request's doing
        return output

    def _prefill_forward(self, sequence: SequenceState) -> tuple[Any, int]:
        """The prompt's forward pass alone: its output and the prompt's length."""
        prompt = torch.tensor([list(sequence.request.prompt_ids)], dtype=torch.long)
        output = self._forward(
            [sequence],
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            position_ids=torch.arange(prompt.shape[1])[None, :],
        )
        return output, prompt.shape[1]

    def canary(self, prompt_ids: Sequence[int]) -> None:
        """A fixed prompt's prefill, outside the batch; raises what the forward pass raises.

        Call it on the worker thread (`call`): it succeeds, and clears `suspect`, only when
        the model can still run a forward pass."""
        probe = SequenceState(GenerationRequest(prompt_ids, max_new_tokens=1, temperature=0), lambda _: None)
        with torch.inference_mode():
            self._prefill_forward(probe)

    def _prefill(self, sequence: SequenceState) -> None:
        if sequence.cancel.is_set():
            self._joining.remove(sequence)
            return
        adapter = sequence.request.adapter
        if adapter is not None:
            if adapter not in self.adapters.paths():  # unloaded while the request waited
                self._joining.remove(sequence)
                sequence.deliver(ModelNotFound(adapter))
                return
            self.adapters.touch(adapter)
        output, length = self._prefill_forward(sequence)
        # The sequence joins the batch's cache and the running list together (`add` changes
        # nothing when it raises), so a failure after this point leaves by `_retire`.
        self._batch.add(output.past_key_values, length)
        self._running.append(sequence)
        self._joining.remove(sequence)
        token = self._sample(output.logits[:, -1], [sequence])[0]
        if token is not None:
            self._accept(sequence, token)

    def _decode(self) -> None:
        assert self._batch.cache is not None
        tokens = torch.tensor([[s.last_token] for s in self._running], dtype=torch.long)
        mask, positions = self._batch.step_inputs()
        output = self._forward(
            self._running,
            input_ids=tokens,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=self._batch.cache,
        )
        self._batch.advance()
        for sequence, token in zip(self._running, self._sample(output.logits[:, -1], self._running), strict=True):
            if token is not None and not sequence.done:
                self._accept(sequence, token)

    def _accept(self, sequence: SequenceState, token: int) -> None:
        sequence.generated += 1
        finish: TokenFinish | None
        emitted: tuple[int, ...]
        if token in self._eos_ids:
            finish, emitted = "stop", ()
        else:
            sequence.last_token = token
            finish = "length" if sequence.generated >= sequence.request.max_new_tokens else None
            emitted = (token,)
        sequence.finished = finish is not None
        sequence.deliver(TokenChunk(emitted, finish))

    def _retire(self) -> None:
        keep = [i for i, s in enumerate(self._running) if not s.done]
        if len(keep) != len(self._running):
            self._batch.keep(keep)
            self._running = [self._running[i] for i in keep]

    def _sample(self, logits: torch.Tensor, sequences: Sequence[SequenceState]) -> list[int | None]:
        """Each row's next token; None for a row whose sampling failed (that sequence is failed)."""
        greedy: list[int] = logits.argmax(dim=-1).tolist()
        chosen: list[int | None] = []
        for row, sequence in enumerate(sequences):
            try:
                chosen.append(self._sample_row(logits[row], sequence.request, sequence.generator, greedy[row]))
            except Exception as exc:
                self._fail_one(sequence, exc, "sampling")
                chosen.append(None)
        return chosen

    @staticmethod
    def _sample_row(
        logits: torch.Tensor, request: GenerationRequest, generator: torch.Generator | None, greedy: int
    ) -> int:
        if request.temperature < _GREEDY_BELOW:
            return greedy
        # Shifted so the largest logit is 0: no temperature can overflow the softmax.
        probs = torch.softmax((logits.float() - logits.max()) / request.temperature, dim=-1)
        if request.top_p < 1:
            probs = _top_p(probs, request.top_p)
        return int(torch.multinomial(probs, 1, generator=generator))

    def _fail_one(self, sequence: SequenceState, exc: Exception, stage: str) -> None:
        """End one sequence: it leaves the batch at the next `_retire`; the others go on."""
        if sequence in self._joining:
            self._joining.remove(sequence)
        sequence.finished = True
        error = exc
        if not isinstance(exc, EngineError):
            log.error("one sequence's %s failed; the rest of the batch goes on", stage, exc_info=exc)
            error = SequenceFault(f"The engine failed in this request's {stage} ({type(exc).__name__}).")
            self._failures_in_a_row += 1  # suspect until a forward pass succeeds
            if self._failures_in_a_row % FAILURES_BEFORE_ALARM == 0:
                log.error(
                    "%d sequences in a row failed with no forward pass succeeding in between: the engine "
                    "itself may be broken (/health runs a canary and answers 503 if it fails)",
                    self._failures_in_a_row,
                )
        sequence.deliver(error)

    @staticmethod
    def _fail(sequences: Sequence[SequenceState], error: Exception) -> None:
        for sequence in sequences:
            sequence.deliver(error)


def _top_p(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches `top_p` (at least one)."""
    ordered, order = probs.sort(descending=True)
    outside = ordered.cumsum(-1) - ordered >= top_p
    outside[..., 0] = False  # top_p 0 keeps the most likely token, not none
    ordered[outside] = 0
    return torch.zeros_like(probs).scatter(-1, order, ordered)
