"""The command line the in-process engine benchmarks share."""

import argparse
from pathlib import Path

__all__ = ["bench_parser"]


def bench_parser(doc: str | None, *, requests: int) -> argparse.ArgumentParser:
    """`--requests` and `--data-dir` (where the built-in models are built and cached)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=requests)
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".cache" / "switchyard")
    return parser
