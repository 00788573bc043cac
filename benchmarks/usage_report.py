"""Micro-benchmark: what counting usage costs an answer, and what a usage report costs at the
worst a day can hold (a new set of `--tenants` tenants every minute, so every minute full).

    python -m benchmarks.usage_report [--tenants 100] [--number 200000]

Prints µs per `UsageLedger.record`, then the time and JSON size of a report over the last
hour and over the whole day, and the ledger's memory (tracemalloc).
"""

import argparse
import json
import time
import tracemalloc

from app.observability.usage import RETENTION_MINUTES, UsageLedger, report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.usage_report")
    parser.add_argument("--tenants", type=int, default=100, help="new tenants every minute (the ledger's cap)")
    parser.add_argument("--number", type=int, default=200_000, help="answers timed for `record`")
    args = parser.parse_args()
    now = time.time()

    ledger = UsageLedger()
    names = [f"tenant-{n % 50}" for n in range(args.number)]
    started = time.perf_counter()
    for name in names:
        ledger.record(name, 200, 42, None, now)
    print(f"record: {(time.perf_counter() - started) / args.number * 1e6:.2f} µs an answer (50 tenants, one minute)")

    tracemalloc.start()
    full = UsageLedger(max_tenants=args.tenants)
    for minute in range(RETENTION_MINUTES):
        for n in range(args.tenants):
            full.record(f"tenant-{minute}-{n}", 200, 10, 0.2, now - 60 * minute)
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    print(f"ledger: {held / 2**20:.0f} MiB for a day of {args.tenants} new tenants a minute")
    for span in (60, RETENTION_MINUTES):
        started = time.perf_counter()
        data = report(full.minutes(0), span, now)
        took = time.perf_counter() - started
        print(f"report of {span} min: {took * 1000:.0f} ms, {len(json.dumps(data)) / 1024:.0f} KiB, "
              f"{len(data['tenants'])} series")  # fmt: skip


if __name__ == "__main__":
    main()
