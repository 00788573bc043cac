"""Usage per tenant and minute, and the SLOs' burn rates (app/observability/usage.py): counted
from each answer, bounded in tenants and days, summed over processes through Redis, and served
to the console at /admin/usage."""

import re
import time
from pathlib import Path

import pytest
from redis.exceptions import RedisError

from app.observability.usage import (
    OTHERS,
    SLOS,
    RedisUsage,
    UsageLedger,
    UsageUnavailable,
    minute_of,
    report,
)
from harness.servers import ROOT, Redis
from tests.unit.app.auth.conftest import serving, settings_of

NOW = 1_800_000_000.0  # a minute's start


def test_answers_are_counted_per_tenant_and_minute() -> None:
    ledger = UsageLedger()
    ledger.record("ada", 200, 30, None, NOW - 30)  # the minute before
    ledger.record("ada", 200, 12, 0.2, NOW)
    ledger.record("ada", 429, None, None, NOW)  # shed
    ledger.record("bob", 503, None, None, NOW)  # shed
    ledger.record("bob", 400, None, None, NOW + 5)  # an error
    ledger.record("bob", 502, None, None, NOW + 6)  # an error too (5xx that is not a shed)
    ledger.record(None, 200, 3, None, NOW + 7)  # authentication off
    data = report(ledger.minutes(0), 3, NOW + 10)
    assert data["minutes"] == [NOW - 120, NOW - 60, NOW]
    assert data["tenants"]["ada"] == {"requests": [0, 1, 2], "tokens": [0, 30, 12], "errors": [0, 0, 0],
                                      "shed": [0, 0, 1]}  # fmt: skip
    assert data["tenants"]["bob"] == {"requests": [0, 0, 3], "tokens": [0, 0, 0], "errors": [0, 0, 2],
                                      "shed": [0, 0, 1]}  # fmt: skip
    assert data["tenants"]["(anonymous)"]["requests"] == [0, 0, 1]


def test_a_report_names_the_busiest_tenants_and_sums_the_rest() -> None:
    ledger = UsageLedger()
    for n in range(30):
        for _ in range(n + 1):
            ledger.record(f"t{n:02}", 200, 1, None, NOW)
    tenants = report(ledger.minutes(0), 1, NOW + 1, top=3)["tenants"]
    assert set(tenants) == {"t29", "t28", "t27", OTHERS}
    assert tenants[OTHERS]["requests"] == [sum(range(1, 28))]


def test_a_flood_of_tenants_and_days_stays_bounded() -> None:
    ledger = UsageLedger(max_tenants=3, retention_minutes=10)
    for n in range(100):
        ledger.record(f"t{n}", 200, 1, None, NOW)
    minute = ledger.minutes(0)[minute_of(NOW)]
    assert set(minute.tenants) == {"t0", "t1", "t2", OTHERS}
    assert minute.tenants[OTHERS]["requests"] == 97
    for n in range(30):
        ledger.record("ada", 200, 1, None, NOW + 60 * n)
    assert len(ledger.minutes(0)) == 10


def test_burn_rates_are_the_bad_share_over_the_budget() -> None:
    ledger = UsageLedger()
    for minute in range(60):  # an hour in which 2 % of answers are 5xx and 5 % of streams start late
        at = NOW - 60 * minute
        for n in range(100):
            ledger.record("ada", 500 if n < 2 else 200, 1, 2.0 if n < 5 else 0.1, at)
    slos = {slo["name"]: {w["window"]: w for w in slo["windows"]} for slo in report(ledger.minutes(0), 60, NOW)["slos"]}
    hour = slos["availability"]["1h"]
    assert hour["events"] == 6000
    assert hour["ratio"] == pytest.approx(0.02)
    assert hour["burn_rate"] == pytest.approx(20.0)
    assert slos["availability"]["5m"]["burn_rate"] == pytest.approx(20.0)
    assert slos["time to first token"]["1h"]["burn_rate"] == pytest.approx(5.0)
    quiet = report({}, 60, NOW)["slos"][0]["windows"][0]
    assert (quiet["events"], quiet["burn_rate"]) == (0, 0.0)  # no answers: nothing burns


def test_the_objectives_are_the_alert_rules_own() -> None:
    rules = (ROOT / "dashboards" / "rules" / "slo.rules.yml").read_text()
    for slo, sli in zip(SLOS, ("llm_request_errors", "llm_ttft_slow"), strict=True):
        thresholds = re.findall(rf"slo:{sli}:ratio_rate\w+ > ([\d.]+)", rules)
        burns = {round(float(threshold) / slo.budget, 6) for threshold in thresholds}
        assert burns == {14.4, 6.0, 3.0, 1.0}, (slo.name, burns)  # the workbook's burn rates of this budget


async def test_workers_usage_is_summed_through_redis_and_waits_out_an_outage(redis: Redis) -> None:
    first, second = UsageLedger(), UsageLedger()
    now = time.time()  # what Redis is read for: the minutes up to this one
    async with RedisUsage(first, redis.url) as one, RedisUsage(second, redis.url) as two:
        first.record("ada", 200, 10, None, now)
        second.record("ada", 200, 5, 3.0, now)
        second.record("bob", 429, None, None, now)
        second.record("eve requests\x1f%20", 200, 7, None, now)  # a subject shaped like a field
        await one.flush()
        minutes = await two.minutes(minute_of(now), minute_of(now))  # flushes its own first
        minute = minutes[minute_of(now)]
        assert minute.tenants["ada"] == {"requests": 2, "tokens": 15, "errors": 0, "shed": 0}
        assert minute.tenants["bob"]["shed"] == 1
        assert minute.tenants["eve requests\x1f%20"] == {"requests": 1, "tokens": 7, "errors": 0, "shed": 0}
        assert set(minute.tenants) == {"ada", "bob", "eve requests\x1f%20"}
        assert minute.sli == {"answers": 4, "answers_5xx": 0, "streams": 1, "streams_slow": 1}
        earlier = await two.minutes(minute_of(now) + 1, minute_of(now))  # tenants from the next minute on
        assert earlier[minute_of(now)].tenants == {}
        assert earlier[minute_of(now)].sli["answers"] == 4

        redis.stop()
        first.record("ada", 200, 1, None, now)
        with pytest.raises((RedisError, OSError)):
            await one.flush()
        assert first.minutes(0)[minute_of(now)].tenants["ada"]["requests"] == 1  # kept for the next flush
        with pytest.raises(UsageUnavailable):
            await one.minutes(minute_of(now), minute_of(now))


async def test_the_admin_api_serves_usage_from_real_answers(tmp_path: Path) -> None:
    async with serving(settings_of(tmp_path, rate_limits={"svc": {"rpm": 2}})) as gateway:
        svc = (await gateway.token("svc")).json()["access_token"]
        ops = (await gateway.token("ops")).json()["access_token"]
        answers = [(await gateway.chat(svc)).status_code for _ in range(3)]
        assert answers == [200, 200, 429]
        assert (await gateway.chat(ops)).status_code == 200
        response = await gateway.client.get("/admin/usage?minutes=5", headers={"authorization": f"Bearer {ops}"})
        assert response.status_code == 200
        data = response.json()
        assert len(data["minutes"]) == 5
        svc_usage = {counter: sum(values) for counter, values in data["tenants"]["svc"].items()}
        assert svc_usage["requests"] == 3
        assert svc_usage["shed"] == 1
        assert svc_usage["tokens"] > 0
        assert sum(data["tenants"]["ops"]["requests"]) == 1
        assert [slo["name"] for slo in data["slos"]] == ["availability", "time to first token"]
        refused = await gateway.client.get("/admin/usage", headers={"authorization": f"Bearer {svc}"})
        assert refused.status_code == 403
        too_long = await gateway.client.get("/admin/usage?minutes=100000", headers={"authorization": f"Bearer {ops}"})
        assert too_long.status_code == 400


def test_minutes_given_back_after_a_failed_flush_age_out_like_the_others() -> None:
    ledger = UsageLedger(retention_minutes=10)
    ledger.record("ada", 200, 1, None, NOW)
    taken = ledger.take()
    ledger.record("ada", 200, 1, None, NOW + 60)  # an answer while the flush was failing
    ledger.restore(taken)
    assert sorted(ledger.minutes(0)) == [minute_of(NOW), minute_of(NOW) + 1]
    ledger.record("ada", 200, 1, None, NOW + 60 * 10)  # ten minutes on: the given-back minute is gone
    assert sorted(ledger.minutes(0)) == [minute_of(NOW) + 1, minute_of(NOW) + 10]


async def test_when_redis_dies_the_usage_page_says_so_and_answers_go_on(tmp_path: Path, redis: Redis) -> None:
    """Counting never waits for Redis: an answer is counted in the process and flushed later."""
    async with serving(settings_of(tmp_path, redis_url=redis.url)) as gateway:
        ops = (await gateway.token("ops")).json()["access_token"]
        assert (await gateway.chat(ops)).status_code == 200
        usage = await gateway.client.get("/admin/usage?minutes=5", headers={"authorization": f"Bearer {ops}"})
        assert usage.status_code == 200
        assert sum(usage.json()["tenants"]["ops"]["requests"]) == 1

        redis.stop()
        assert (await gateway.chat(ops)).status_code == 200
        # another period than the report kept for 5 s: read again
        refused = await gateway.client.get("/admin/usage?minutes=6", headers={"authorization": f"Bearer {ops}"})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "usage_unavailable"
