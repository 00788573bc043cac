"""The Transformers engine's settings: environment (`SWITCHYARD_ENGINE_*`), then command line."""

from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from engines.server.auth import checked_setting

__all__ = ["EngineSettings"]


class EngineSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_ENGINE_", extra="ignore")

    model: str | None = Field(default=None, description="Hub id or local path; the built-in model when unset.")
    served_model_name: str | None = Field(default=None, description="Name clients use; defaults to --model.")
    host: str = "127.0.0.1"
    port: int = Field(default=8100, ge=0, le=65535)
    max_model_len: int | None = Field(default=None, ge=16)
    # Sequences decoded together (vLLM: --max-num-seqs), and how many may wait beyond them
    # before new requests get 503 + Retry-After at once.
    max_num_seqs: int = Field(default=32, ge=1)
    max_queued_requests: int = Field(default=128, ge=0)
    # LoRA adapters held at once (least recently used evicted first), and the highest rank accepted.
    max_loras: int = Field(default=8, ge=1)
    max_lora_rank: int = Field(default=64, ge=1)
    data_dir: Path = Field(
        default=Path.home() / ".cache" / "switchyard",
        validation_alias=AliasChoices("SWITCHYARD_DATA_DIR", "data_dir"),
    )
    log_level: str = "info"
    # With a key, every route but /health and /metrics needs `Authorization: Bearer <key>`
    # (as vLLM's --api-key); without one the engine is open, for a trusted network only.
    # At least 16 characters: an empty or short one is refused at start.
    api_key: SecretStr | None = None

    @field_validator("api_key")
    @classmethod
    def _long_enough(cls, key: SecretStr | None) -> SecretStr | None:
        return checked_setting(key, "--api-key or SWITCHYARD_ENGINE_API_KEY")
