"""What durable idempotency costs in Redis: keeping an answer before it is sent, and renewing
every running claim in one call.

    python -m benchmarks.idempotency_costs [--redis redis://127.0.0.1:6379/5] [--repeats 200]

Prints the median time of a claim (which every keyed request always paid), of keeping a 2 KB
answer (now paid before the answer is sent, where it used to run after), and of one renewal
call for 10, 100 and 1,000 running claims (made every third of the lease: 1.7 s at the 5 s
default), on this machine's loopback.
"""

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

from app.reliability.idempotency_store import RedisStore, StoredAnswer

ANSWER = StoredAnswer(200, {"content-type": "application/json", "x-request-id": "r" * 32}, b"x" * 2048)


async def _median_ms(repeats: int, action: Callable[[int], Awaitable[object]]) -> float:
    timings = []
    for number in range(repeats):
        started = time.perf_counter()
        await action(number)
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


async def _renewal_ms(store: RedisStore, running: int, repeats: int) -> float:
    claims = {
        f"run-{running}-{n}": (await store.claim(f"run-{running}-{n}", "fp", 60_000)).owner for n in range(running)
    }
    return await _median_ms(repeats, lambda _: store.renew(claims, 5_000))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/5")
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    store = RedisStore(args.redis, prefix=f"bench:{uuid.uuid4().hex}:")
    try:
        owners = [(await store.claim(f"warm-{n}", "fp", 60_000)).owner for n in range(args.repeats)]
        claim_ms = await _median_ms(args.repeats, lambda n: store.claim(f"claim-{n}", "fp", 60_000))
        keep_ms = await _median_ms(args.repeats, lambda n: store.complete(f"warm-{n}", owners[n], "fp", ANSWER, 60_000))
        print(f"claim: {claim_ms:.3f} ms; keep a 2 KB answer: {keep_ms:.3f} ms (median of {args.repeats})")
        for running in (10, 100, 1000):
            renew_ms = await _renewal_ms(store, running, max(args.repeats // 10, 5))
            each_us = renew_ms / running * 1000
            print(f"renew {running} running claims in one call: {renew_ms:.3f} ms ({each_us:.1f} us each)")
    finally:
        await store.aclose()


if __name__ == "__main__":
    asyncio.run(main())
