"""`python -m engines.transformers`: serve a Transformers model over the OpenAI protocol."""

import argparse
import os
from typing import Any

import uvicorn
from pydantic import ValidationError

from engines.builtin_model import BUILTIN_MODEL_NAME, ensure_builtin_model
from engines.server.api import create_app
from engines.transformers.engine import TransformersEngine, resolve_model
from engines.transformers.settings import EngineSettings
from protocol import tracing


def parse_args(argv: list[str] | None = None) -> EngineSettings:
    parser = argparse.ArgumentParser(prog="python -m engines.transformers", description=__doc__)
    parser.add_argument("--model", help="hub id or local path (default: the built-in model)")
    parser.add_argument("--served-model-name", help="the name clients send as `model`")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--max-model-len", type=int, help="context length (default: the model's)")
    parser.add_argument("--max-num-seqs", type=int, help="sequences decoded together (default 32)")
    parser.add_argument("--max-queued-requests", type=int, help="waiting requests before 503 (default 128)")
    parser.add_argument("--max-loras", type=int, help="LoRA adapters held at once (default 8)")
    parser.add_argument("--max-lora-rank", type=int, help="highest LoRA rank accepted (default 64)")
    parser.add_argument("--data-dir", help="where the built-in model is cached")
    parser.add_argument("--log-level")
    parser.add_argument(
        "--api-key",
        help="require `Authorization: Bearer <key>` on every route but /health and /metrics "
        "(prefer SWITCHYARD_ENGINE_API_KEY: a flag is visible in the process list)",
    )
    given: dict[str, Any] = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    try:
        return EngineSettings(**given)
    except ValidationError as exc:  # exit 2 with what to fix, as for a bad flag; never start half-configured
        parser.error("; ".join(f"{e['loc'][0]}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()))


def main(argv: list[str] | None = None) -> None:
    settings = parse_args(argv)
    if settings.model is None:
        model_path = str(ensure_builtin_model(settings.data_dir))
        served = settings.served_model_name or BUILTIN_MODEL_NAME
    else:
        model_path = resolve_model(settings.model)
        served = settings.served_model_name or settings.model
    engine = TransformersEngine(
        model_path,
        served_model_name=served,
        max_model_len=settings.max_model_len,
        max_batch_size=settings.max_num_seqs,
        max_waiting=settings.max_queued_requests,
        max_loras=settings.max_loras,
        max_lora_rank=settings.max_lora_rank,
    )
    api_key = settings.api_key.get_secret_value() if settings.api_key is not None else None
    app = create_app(engine, model_root=model_path, api_key=api_key)
    tracing.configure("switchyard-engine", os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level, access_log=False)


if __name__ == "__main__":
    main()
