"""The vLLM launcher's settings: environment (`SWITCHYARD_VLLM_*`), then command line."""

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from engines.server.auth import checked_setting

__all__ = ["VllmSettings", "default_vllm_python"]

_REPO = Path(__file__).resolve().parents[2]


def default_vllm_python() -> Path:
    """`.venv-vllm/bin/python` beside the project: vLLM pins its own torch, fastapi and transformers."""
    return _REPO / ".venv-vllm" / "bin" / "python"


class VllmSettings(BaseSettings):
    # Errors name the setting, not the first of its aliases (which may not be the one set).
    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_VLLM_", extra="ignore", loc_by_alias=False)

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
    # With a key, every route but /health and /metrics needs `Authorization: Bearer <key>`
    # (vLLM's --api-key, and our guard on the paths it leaves open: `engines.vllm.guard`). The
    # Transformers engine's variable is read too, so one setting serves either kind of engine,
    # and so is vLLM's own, so a key meant for vLLM never leaves its other routes open.
    api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "SWITCHYARD_VLLM_API_KEY", "SWITCHYARD_ENGINE_API_KEY", "VLLM_API_KEY", "api_key"
        ),
    )
    data_dir: Path = Field(
        default=Path.home() / ".cache" / "switchyard",
        validation_alias=AliasChoices("SWITCHYARD_DATA_DIR", "data_dir"),
    )

    @field_validator("api_key")
    @classmethod
    def _long_enough(cls, key: SecretStr | None) -> SecretStr | None:
        return checked_setting(key, "--api-key, SWITCHYARD_VLLM_API_KEY, SWITCHYARD_ENGINE_API_KEY or VLLM_API_KEY")
