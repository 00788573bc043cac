"""Benchmark: the Transformers engine's resident memory across many requests.

    python -m benchmarks.engine_memory [--requests 10000] [--concurrency 16]

Starts the engine on the built-in model and sends short chat requests (streamed
and not, some with a LoRA adapter once one is loaded, some cancelled half-way),
reading the process's VmRSS from /proc every 1,000 requests. Growth after the
warm-up thousand is what a leak would show.
"""

import asyncio
import tempfile
from pathlib import Path

import aiohttp
import httpx

from benchmarks.cli import bench_parser
from engines.builtin_model import BUILTIN_MODEL_NAME, ensure_builtin_model
from harness.adapters import make_lora_adapter
from harness.servers import ServerProcess, free_port


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def one(session: aiohttp.ClientSession, url: str, i: int, adapter: str | None) -> None:
    body = {
        "model": adapter if adapter and i % 3 == 0 else BUILTIN_MODEL_NAME,
        "messages": [{"role": "user", "content": f"request {i}"}],
        "max_tokens": 8,
        "stream": i % 2 == 0,
    }
    async with session.post(url + "/v1/chat/completions", json=body) as response:
        if i % 10 == 0 and body["stream"]:
            await response.content.readline()  # hang up after the first event
            return
        await response.read()
        response.raise_for_status()


async def drive(url: str, pid: int, total: int, concurrency: int, adapter: str | None) -> list[tuple[int, float]]:
    samples: list[tuple[int, float]] = [(0, rss_mib(pid))]
    counter = iter(range(total))
    done = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done
        for i in counter:
            await one(session, url, i, adapter)
            done += 1
            if done % 1000 == 0:
                samples.append((done, rss_mib(pid)))
                print(f"{done:6} requests  RSS {samples[-1][1]:7.1f} MiB", flush=True)

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return samples


def main() -> None:
    parser = bench_parser(__doc__, requests=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="engine-memory-"))
    model = ensure_builtin_model(args.data_dir)
    adapter = make_lora_adapter(model, work / "adapter")
    port = free_port()
    engine = ServerProcess(
        "engines.transformers",
        ["--model", str(model), "--served-model-name", BUILTIN_MODEL_NAME, "--port", str(port)],
        port=port,
        log_dir=work,
    ).wait_ready()
    try:
        loaded = httpx.post(
            engine.url + "/v1/load_lora_adapter", json={"lora_name": "mem", "lora_path": str(adapter)}, timeout=60
        )
        loaded.raise_for_status()
        samples = asyncio.run(drive(engine.url, engine.process.pid, args.requests, args.concurrency, "mem"))
    finally:
        engine.stop()
    warm = next(rss for count, rss in samples if count >= 1000)
    last = samples[-1][1]
    print(f"\nRSS after 1,000 requests {warm:.1f} MiB, after {samples[-1][0]:,} {last:.1f} MiB: {last - warm:+.1f} MiB")


if __name__ == "__main__":
    main()
