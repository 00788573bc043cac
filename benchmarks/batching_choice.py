"""The measurement behind the engine's batching: Transformers' continuous-batching manager vs ours.

    python -m benchmarks.batching_choice [--requests 32] [--max-tokens 64]

In-process, no HTTP: the same prompts, greedy, all submitted at once, on each
built-in model. Each side runs one warm-up round first (the manager allocates
its paged cache then); the figure is the second round.
"""

import asyncio
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from benchmarks.cli import bench_parser
from engines.base import GenerationRequest
from engines.builtin_model import RECIPES, ensure_builtin_model
from engines.transformers.engine import TransformersEngine


def prompts(engine: TransformersEngine, count: int) -> list[list[int]]:
    return [
        engine.encode_chat([{"role": "user", "content": f"Request {i}: item {i * 7919 % 1000}"}]) for i in range(count)
    ]


def hf_manager(model_path: Path, batch: list[list[int]], max_tokens: int) -> float:
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    config = GenerationConfig(max_new_tokens=max_tokens, do_sample=False, eos_token_id=-1)
    manager = model.init_continuous_batching(generation_config=config)
    manager.start()
    try:
        rate = 0.0
        for _ in range(2):
            started = time.perf_counter()
            for ids in batch:
                manager.add_request(ids, max_new_tokens=max_tokens)
            finished = 0
            for result in manager:
                finished += result.is_finished()
                if finished == len(batch):
                    break
            rate = len(batch) * max_tokens / (time.perf_counter() - started)
        return rate
    finally:
        manager.stop(block=True)


async def ours(engine: TransformersEngine, batch: list[list[int]], max_tokens: int) -> float:
    async def one(ids: list[int]) -> int:
        count = 0
        async for chunk in engine.generate(GenerationRequest(ids, max_new_tokens=max_tokens, temperature=0)):
            count += len(chunk.token_ids)
        return count

    rate = 0.0
    for _ in range(2):
        started = time.perf_counter()
        tokens = sum(await asyncio.gather(*(one(ids) for ids in batch)))
        rate = tokens / (time.perf_counter() - started)
    return rate


def sequential(model_path: Path, batch: list[list[int]], max_tokens: int) -> float:
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()
    started = time.perf_counter()
    for ids in batch[:4]:
        inputs = torch.tensor([ids])
        with torch.inference_mode():
            model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=max_tokens, do_sample=False)
    return 4 * max_tokens / (time.perf_counter() - started)


async def run_ours(path: Path, name: str, requests: int, max_tokens: int) -> tuple[list[list[int]], float]:
    engine = TransformersEngine(str(path), served_model_name=name, max_batch_size=requests)
    try:
        batch = prompts(engine, requests)
        return batch, await ours(engine, batch, max_tokens)
    finally:
        await engine.aclose()


def main() -> None:
    parser = bench_parser(__doc__, requests=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    print("| model | sequential generate() | Transformers CB manager | ours | ours / CB manager |")
    print("|---|---|---|---|---|")
    for name, recipe in sorted(RECIPES.items()):
        path = ensure_builtin_model(args.data_dir, recipe)

        batch, mine = asyncio.run(run_ours(path, name, args.requests, args.max_tokens))
        theirs = hf_manager(path, batch, args.max_tokens)
        alone = sequential(path, batch, args.max_tokens)
        print(
            f"| {name} | {alone:,.0f} tok/s | {theirs:,.0f} tok/s | {mine:,.0f} tok/s | {mine / theirs:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
