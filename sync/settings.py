"""The sync sidecar's settings: environment (`SWITCHYARD_SYNC_*`), then command line."""

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, HttpUrl, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from protocol.dns import DnsName, Nameservers

__all__ = ["LOOPBACK_HOSTS", "SyncSettings"]

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


class SyncSettings(BaseSettings):
    # An empty variable is an unset one (compose passes `${SWITCHYARD_SYNC_PEER_KEY:-}` as "").
    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_SYNC_", extra="forbid", env_ignore_empty=True)

    region: str = Field(default="local", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    # `edge`: pulls and serves, never publishes (its API refuses to).
    role: Literal["region", "edge"] = "region"
    host: str = "127.0.0.1"
    port: int = Field(default=8300, ge=0, le=65535)
    peers: list[HttpUrl] = []  # the other regions' sidecars
    engines: list[HttpUrl] = []  # this region's engines, which the sidecar loads adapters into
    # ... and those found in DNS (a Kubernetes headless Service's name): each A and AAAA record
    # is an engine at http://address:engines_port, resolved again at every reconcile pass.
    engines_dns: DnsName | None = None
    engines_port: int = Field(default=8100, ge=1, le=65535)
    nameservers: Nameservers = []  # empty: the system's resolver
    data_dir: Path = Field(
        default=Path.home() / ".cache" / "switchyard",
        validation_alias=AliasChoices("SWITCHYARD_DATA_DIR", "data_dir"),
    )
    blob_dir: Path | None = None  # default: <data_dir>/sync/<region>/blobs
    state_dir: Path | None = None  # default: <data_dir>/sync/<region>/state
    # The engines' base model: adapters trained on another are refused. The first name is
    # the canonical one; the others are accepted spellings (a local path, say).
    base_models: list[str] = Field(default=["switchyard-tiny-v1"], min_length=1)
    max_rank: int = Field(default=64, ge=1)  # the engines' maximum LoRA rank
    anti_entropy_interval_s: float = Field(default=5.0, gt=0)
    reconcile_interval_s: float = Field(default=2.0, gt=0)
    peer_timeout_s: float = Field(default=10.0, gt=0)
    retry_base_s: float = Field(default=0.2, gt=0)  # backoff for peers that are down ...
    retry_max_s: float = Field(default=10.0, gt=0)  # ... doubling up to this
    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_upload_bytes: int = Field(default=2 * 1024**3, ge=1024)  # an adapter uploaded as a tar archive
    max_drift_ms: int = Field(default=60_000, ge=0)  # a peer's clock at most this far ahead
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    # Who may change the registry (publish, upload, retire, revoke): a bearer JWT access token
    # from the gateway's issuer (or the external one the gateway trusts) with scope `adapters`
    # or `admin`. `disabled` is refused unless the sidecar listens on loopback only.
    auth_mode: Literal["jwt", "disabled"] = "jwt"
    auth_issuer: str = Field(default="http://127.0.0.1:8000", min_length=1)  # the exact `iss`: the embedded gateway's
    auth_jwks: str | None = None  # the issuer's JWKS, a URL or a file; default: <auth_issuer>/.well-known/jwks.json
    auth_audience: str = Field(default="switchyard", min_length=1)  # must be in every token's `aud`
    # The other regions' sidecars: every peer request carries it (`Authorization: Bearer`) and
    # the peer routes (/sync/*, /blobs/*) require it. The same key in every region.
    peer_key: SecretStr | None = None
    # The engines' API key (their --api-key), sent on every call to them.
    engine_api_key: SecretStr | None = None

    @model_validator(mode="after")
    def _is_safe(self) -> "SyncSettings":
        exposed = self.host not in LOOPBACK_HOSTS
        if self.auth_mode == "disabled" and exposed:
            raise ValueError(f"auth_mode disabled is refused unless host is a loopback address, not {self.host!r}")
        if self.peers and self.peer_key is None and exposed:
            raise ValueError(
                f"peers without peer_key are refused unless host is a loopback address, not {self.host!r}: "
                "set SWITCHYARD_SYNC_PEER_KEY (the same in every region)"
            )
        if self.peer_key is not None and len(self.peer_key.get_secret_value()) < 16:
            raise ValueError("peer_key is shorter than 16 characters: too easy to guess")
        return self

    @property
    def jwks(self) -> str:
        return self.auth_jwks or self.auth_issuer.rstrip("/") + "/.well-known/jwks.json"

    @property
    def blobs(self) -> Path:
        return self.blob_dir or self.data_dir / "sync" / self.region / "blobs"

    @property
    def state(self) -> Path:
        return self.state_dir or self.data_dir / "sync" / self.region / "state"
