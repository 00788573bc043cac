"""`python -m engines.vllm`: serve a model with vLLM's OpenAI server, with the flags the gateway relies on.

The launcher runs in the project's environment (it can build the built-in
model), then replaces itself with vLLM's server running in vLLM's own
environment (`make vllm-env` creates `.venv-vllm`). Extra arguments after `--`
go to vLLM unchanged.
"""

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from engines.builtin_model import BUILTIN_MODEL_NAME, ensure_builtin_model
from engines.vllm.guard import KEY_VARIABLE, VllmApiKeyGuard
from engines.vllm.settings import VllmSettings

# Our API-key guard, loaded by vLLM with `--middleware` from this repository's root.
GUARD = f"{VllmApiKeyGuard.__module__}.{VllmApiKeyGuard.__qualname__}"
_REPO = Path(__file__).resolve().parents[2]


def parse_args(argv: list[str] | None = None) -> tuple[VllmSettings, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m engines.vllm", description=__doc__)
    parser.add_argument("--model", help="hub id or local path (default: the built-in model)")
    parser.add_argument("--served-model-name")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--max-model-len", type=int)
    parser.add_argument("--dtype", help="weights' dtype: auto, float32, bfloat16, ...")
    parser.add_argument("--max-lora-rank", type=int)
    parser.add_argument("--max-loras", type=int)
    parser.add_argument("--cpu-kvcache-gib", type=int)
    parser.add_argument("--python", help="vLLM environment's python (default: .venv-vllm/bin/python)")
    parser.add_argument("--data-dir", help="where the built-in model is cached")
    parser.add_argument(
        "--api-key",
        help="require `Authorization: Bearer <key>` on every route but /health and /metrics "
        "(prefer SWITCHYARD_VLLM_API_KEY: a flag is visible in the process list)",
    )
    args, extra = parser.parse_known_args(argv)
    given: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = VllmSettings(**given)
    except ValidationError as exc:  # exit 2 with what to fix, as for a bad flag; never start half-configured
        parser.error("; ".join(f"{e['loc'][0]}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()))
    return settings, [a for a in extra if a != "--"]


def vllm_command(settings: VllmSettings, model_path: str, served: str, extra: list[str]) -> list[str]:
    return [
        str(settings.python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        model_path,
        "--served-model-name",
        served,
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--max-model-len",
        str(settings.max_model_len),
        "--dtype",
        settings.dtype,
        "--enable-lora",
        "--max-lora-rank",
        str(settings.max_lora_rank),
        "--max-loras",
        str(settings.max_loras),
        "--disable-uvicorn-access-log",
        # vLLM's --api-key guards /v1 and a few prefixes only; ours guards every path but the probes.
        *(["--middleware", GUARD] if settings.api_key is not None else []),
        *extra,
    ]


def vllm_environment(settings: VllmSettings) -> dict[str, str]:
    env = dict(os.environ)
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"  # /v1/load_lora_adapter at run time
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.cpu_kvcache_gib))
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    if settings.api_key is not None:
        # vLLM reads its --api-key from VLLM_API_KEY too, and so does our guard: there, the key
        # stays out of the process list.
        env[KEY_VARIABLE] = settings.api_key.get_secret_value()
        # The guard is imported from this repository inside vLLM's environment, from any directory.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO), env.get("PYTHONPATH")) if p)
    return env


def main(argv: list[str] | None = None) -> None:
    settings, extra = parse_args(argv)
    if not settings.python.exists():
        sys.exit(f"no vLLM environment at {settings.python}: run `make vllm-env`, or pass --python")
    if settings.model is None:
        model_path, served = str(ensure_builtin_model(settings.data_dir)), BUILTIN_MODEL_NAME
    else:
        model_path, served = settings.model, settings.model
    command = vllm_command(settings, model_path, settings.served_model_name or served, extra)
    os.execve(command[0], command, vllm_environment(settings))


if __name__ == "__main__":
    main()
