"""A fine-tuning worker's settings: environment (`SWITCHYARD_FINETUNE_*`, and the gateway's
`SWITCHYARD_DATABASE_URL` and `SWITCHYARD_DATA_DIR`), then command line."""

import os
import socket
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["WorkerSettings"]


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_FINETUNE_", extra="ignore")

    # The records: the gateway's database (PostgreSQL in production); unset, SQLite in data_dir.
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("SWITCHYARD_DATABASE_URL", "database_url")
    )
    data_dir: Path = Field(
        default=Path.home() / ".cache" / "switchyard",
        validation_alias=AliasChoices("SWITCHYARD_DATA_DIR", "data_dir"),
    )
    # The base models this worker trains, served name -> local folder; unset, the built-in model.
    models: dict[str, str] = Field(default_factory=dict)
    max_length: int | None = Field(default=None, ge=16)  # tokens an example may have; default: the model's
    # Where adapters are made servable: the region's sync sidecar (every region then serves
    # them), or else one engine's load API (its URL and API key: the embedded default) ...
    sync_url: str | None = None
    engine_url: str | None = None
    engine_api_key: SecretStr | None = None
    # ... and the region's gateway, asked until it lists them.
    gateway_url: str = "http://127.0.0.1:8000"
    # The worker's credential, for the gateway (scopes `chat` and `admin`: every tenant's models
    # are listed to it) and the sidecar (scope `adapters`): a token read from a file at each
    # use (whoever writes it renews it), or the client-credentials grant at `token_url`.
    token_file: Path | None = None
    token_url: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    name: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    lease_s: float = Field(default=30.0, ge=1)
    poll_s: float = Field(default=1.0, gt=0)
    checkpoint_steps: int = Field(default=50, ge=1)
    learning_rate: float = Field(default=1e-3, gt=0)  # the base that `learning_rate_multiplier` scales
    # How long a trained adapter's publishing is tried again while the engine or sidecar is away
    # (backing off from 5 s to a minute); a refusal of the adapter itself fails the job at once.
    publish_timeout_s: float = Field(default=600.0, ge=0)
    # At start, the names the region's engine or sidecar lacks of the newest succeeded jobs'
    # adapters (whose files are here) published again, at most this many names (a job's own and
    # its stacked name are two): an engine forgets them on a restart, so at most what it holds
    # at once (its max_loras).
    restore_adapters: int = Field(default=8, ge=0)
    nice: int = Field(default=10, ge=0, le=19)  # added to the worker's niceness: serving goes first
    log_level: str = "info"
