"""The pipeline's first three layers, each over a stub `next` and a hand-made `Call`: what
each adds to the call on its way down and to the answer on its way back."""

import json

import pytest
from fastapi.responses import Response

from app.errors import EngineUnreachable, Overloaded, RateLimited
from app.observability.metrics import GatewayMetrics
from app.pipeline.call import Call, Placement
from app.pipeline.layers import Admitted, Idempotent, Limited
from app.reliability.admission import Admission
from app.reliability.idempotency import Idempotency
from app.reliability.idempotency_store import InProcessStore
from tests.unit.app.pipeline.stubs import make_call, registry_of


def _completion(total_tokens: int) -> Response:
    usage = {"prompt_tokens": 1, "completion_tokens": total_tokens - 1, "total_tokens": total_tokens}
    return Response(json.dumps({"object": "chat.completion", "usage": usage}), media_type="application/json")


async def test_idempotent_runs_a_keyed_call_once_and_replays_its_answer() -> None:
    idempotency = Idempotency(InProcessStore(), lease_s=5, retention_s=60, max_answer_bytes=4096)
    calls: list[Call] = []

    async def next(call: Call) -> Response:
        calls.append(call)
        return _completion(30)

    layer = Idempotent(idempotency, next)
    keyed = make_call((b"idempotency-key", b"k-1"))
    first, again = await layer(keyed), await layer(keyed)
    assert calls == [keyed]
    assert again.body == first.body
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    await layer(make_call((b"idempotency-key", b"k-1"), tenant="other"))  # keys are the tenant's own
    await layer(make_call())  # no key: no record, nothing replayed
    assert len(calls) == 3
    await idempotency.aclose()


class RecordingLimiter:
    """A rate limiter that grants everything (or refuses, when told) and records what it was asked."""

    def __init__(self, refuse: RateLimited | None = None) -> None:
        self.asked: list[tuple[str, str, int]] = []
        self._refuse = refuse

    async def charge(self, subject: str, tokens: int) -> dict[str, str]:
        self.asked.append(("charge", subject, tokens))
        if self._refuse is not None:
            raise self._refuse
        return {"x-ratelimit-remaining-tokens": "900"}

    async def correct(self, subject: str, tokens: int) -> None:
        self.asked.append(("correct", subject, tokens))


async def test_limited_charges_the_estimate_then_corrects_it_to_the_answers_usage() -> None:
    limiter = RecordingLimiter()

    async def next(call: Call) -> Response:
        assert limiter.asked == [("charge", "t", 100)]  # charged before the call runs
        return _completion(30)

    answer = await Limited(limiter, GatewayMetrics(), next)(make_call(tokens=100))
    assert limiter.asked == [("charge", "t", 100), ("correct", "t", 30 - 100)]
    assert answer.headers["x-ratelimit-remaining-tokens"] == "900"


async def test_limited_refunds_the_tokens_of_a_call_that_failed() -> None:
    limiter = RecordingLimiter()

    async def next(call: Call) -> Response:
        raise EngineUnreachable("down")

    with pytest.raises(EngineUnreachable):
        await Limited(limiter, GatewayMetrics(), next)(make_call(tokens=100))
    assert limiter.asked == [("charge", "t", 100), ("correct", "t", -100)]


async def test_limited_sheds_a_refused_call_before_it_runs() -> None:
    refusal = RateLimited("requests", 20_000, {})
    metrics = GatewayMetrics()

    async def next(call: Call) -> Response:
        raise AssertionError("a refused call must not run")

    with pytest.raises(RateLimited):
        await Limited(RecordingLimiter(refuse=refusal), metrics, next)(make_call())
    assert metrics.registry.get_sample_value("llm_shed_total", {"reason": refusal.code}) == 1


async def test_admitted_hands_the_first_attempt_a_placement_holding_a_share_of_its_replica() -> None:
    registry = registry_of(2)
    admission = Admission(registry, max_queue=4, queue_timeout_s=5)
    placements: list[Placement] = []

    async def next(call: Call, placement: Placement) -> Response:
        placements.append(placement)
        assert placement.lease.replica is placement.decision.node
        assert placement.decision.node.in_flight == 1  # its share is held while the call runs
        placement.lease.release()
        return _completion(30)

    answer = await Admitted(admission, registry, GatewayMetrics(), next)(make_call())
    assert answer.status_code == 200
    [placement] = placements
    assert placement.attempt == 1
    assert placement.decision.node in list(registry.replicas())


async def test_admitted_sheds_when_no_replica_has_room_and_the_queue_is_full() -> None:
    registry = registry_of(1, max_load=1)
    admission = Admission(registry, max_queue=0, queue_timeout_s=5)
    metrics = GatewayMetrics()

    async def next(call: Call, placement: Placement) -> Response:
        raise AssertionError("a shed call must not run")

    [replica] = registry.replicas()
    held = admission.lease("t", replica)  # the replica is full
    with pytest.raises(Overloaded):
        await Admitted(admission, registry, metrics, next)(make_call())
    assert metrics.registry.get_sample_value("llm_shed_total", {"reason": "overloaded"}) == 1
    held.release()
