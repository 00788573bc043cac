"""The engines' API-key guard as vLLM loads it: `--middleware engines.vllm.guard.VllmApiKeyGuard`.

vLLM's own `--api-key` guards only `/v1`, `/v2`, `/inference` and `/cohere`: its SageMaker
routes (`/invocations` generates, `/adapters` loads any local folder under any name),
`/tokenize`, `/detokenize`, `/ping`, `/version` and the rest answer anyone. This guard
(`engines.server.auth`, the one our engine uses) leaves only `/health` and `/metrics` open.
`/ping` is SageMaker's health check: no deployment of ours runs on SageMaker, so it is guarded.

vLLM builds a middleware with no arguments, so the key is read here from VLLM_API_KEY,
where the launcher puts it (and where vLLM reads its own `--api-key` from). This module
runs inside vLLM's environment: the standard library and starlette only.
"""

import os

from starlette.types import ASGIApp

from engines.server.auth import ApiKeyGuard

__all__ = ["KEY_VARIABLE", "VllmApiKeyGuard"]

KEY_VARIABLE = "VLLM_API_KEY"


class VllmApiKeyGuard(ApiKeyGuard):
    def __init__(self, app: ASGIApp) -> None:
        key = os.environ.get(KEY_VARIABLE)
        if key is None:  # refuse to start rather than serve unguarded
            raise RuntimeError(f"{KEY_VARIABLE} is unset: the API-key guard has no key to check")
        super().__init__(app, api_key=key)
