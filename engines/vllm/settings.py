"""The vLLM launcher's settings: environment (`SWITCHYARD_VLLM_*`), then command line."""

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["VllmSettings", "default_vllm_python"]

_REPO = Path(__file__).resolve().parents[2]


def default_vllm_python() -> Path:
    """`.venv-vllm/bin/python` beside the project: vLLM pins its own torch, fastapi and transformers."""
    return _REPO / ".venv-vllm" / "bin" / "python"


class VllmSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_VLLM_", extra="ignore")

    model: str | None = Field(default=None, description="Hub id or local path; the built-in model when unset.")
    served_model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8200, ge=0, le=65535)
    max_model_len: int = Field(default=2048, ge=16)
    dtype: str = "auto"
    max_lora_rank: int = Field(default=16, ge=1)
    max_loras: int = Field(default=4, ge=1)
    # KV cache size in GiB for vLLM's CPU backend (VLLM_CPU_KVCACHE_SPACE).
    cpu_kvcache_gib: int = Field(default=1, ge=1)
    python: Path = Field(default_factory=default_vllm_python)
    # vLLM's --api-key (every /v1 route needs `Authorization: Bearer <key>`); the Transformers
    # engine's variable is read too, so one setting serves either kind of engine.
    api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("SWITCHYARD_VLLM_API_KEY", "SWITCHYARD_ENGINE_API_KEY", "api_key")
    )
    data_dir: Path = Field(
        default=Path.home() / ".cache" / "switchyard",
        validation_alias=AliasChoices("SWITCHYARD_DATA_DIR", "data_dir"),
    )
