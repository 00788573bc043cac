"""The cost of serving several LoRA adapters in one batch (PEFT mixed-adapter forward).

    python -m benchmarks.lora_mix [--requests 32] [--max-tokens 64]

In-process on each built-in model, 32 greedy requests submitted at once, second
of two rounds: (1) no adapter loaded, (2) two adapters loaded but every request
on the base model, (3) requests spread over base, adapter a and adapter b in
one batch, (4) every request on adapter a.
"""

import asyncio
import tempfile
import time
from pathlib import Path

from benchmarks.cli import bench_parser
from engines.base import GenerationRequest
from engines.builtin_model import RECIPES, ensure_builtin_model
from engines.transformers.engine import TransformersEngine
from harness.adapters import make_lora_adapter

MIXES: dict[str, list[str | None]] = {
    "no adapter loaded": [None],
    "adapters loaded, all base": [None],
    "base + a + b mixed": [None, "a", "b"],
    "all on adapter a": ["a"],
}


async def rate(engine: TransformersEngine, models: list[str | None], requests: int, max_tokens: int) -> float:
    async def one(i: int) -> int:
        request = GenerationRequest(
            engine.encode_chat([{"role": "user", "content": f"Request {i}"}]),
            max_new_tokens=max_tokens,
            temperature=0,
            adapter=models[i % len(models)],
        )
        return sum([len(chunk.token_ids) async for chunk in engine.generate(request)])

    result = 0.0
    for _ in range(2):
        started = time.perf_counter()
        tokens = sum(await asyncio.gather(*(one(i) for i in range(requests))))
        result = tokens / (time.perf_counter() - started)
    return result


async def measure(model: Path, name: str, adapters: dict[str, Path], requests: int, max_tokens: int) -> list[float]:
    engine = TransformersEngine(str(model), served_model_name=name, max_batch_size=requests)
    try:
        rates = [await rate(engine, MIXES["no adapter loaded"], requests, max_tokens)]
        for adapter, path in adapters.items():
            await engine.load_adapter(adapter, str(path))
        for mix in list(MIXES)[1:]:
            rates.append(await rate(engine, MIXES[mix], requests, max_tokens))
        return rates
    finally:
        await engine.aclose()


def main() -> None:
    parser = bench_parser(__doc__, requests=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lora-mix-"))
    print("| model | " + " | ".join(MIXES) + " |")
    print("|---|" + "---|" * len(MIXES))
    for name, recipe in sorted(RECIPES.items()):
        model = ensure_builtin_model(args.data_dir, recipe)
        adapters = {a: make_lora_adapter(model, work / name / a, seed=i) for i, a in enumerate(["a", "b"])}
        rates = asyncio.run(measure(model, name, adapters, args.requests, args.max_tokens))
        print(f"| {name} | " + " | ".join(f"{r:,.0f} tok/s" for r in rates) + " |", flush=True)


if __name__ == "__main__":
    main()
