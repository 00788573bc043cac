"""Gateway settings: defaults < YAML file < environment (`SWITCHYARD_*`) < command line.

The only module of the gateway that reads the environment.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from protocol.dns import DnsName, Nameservers

__all__ = [
    "AuthClientSettings",
    "DiscoverySettings",
    "GatewaySettings",
    "PoolSettings",
    "RateLimitSettings",
    "load_settings",
]

PoolKind = Literal["transformers", "vllm"]
# `adapters`: publishing and retiring adapters at the sync sidecars (which also take `admin`).
Scope = Literal["chat", "finetune", "adapters", "admin"]
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
AsymmetricAlgorithm = Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]


class AuthClientSettings(BaseModel):
    """A client of the built-in issuer: `python -m app.auth hash-secret` makes the hash."""

    model_config = ConfigDict(extra="forbid")

    client_id: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_.:@-]+$")
    secret_hash: str = Field(pattern=r"^scrypt\$")
    scopes: list[Scope] = ["chat"]


class AuthUserSettings(BaseModel):
    """A person who signs in to the console at the built-in issuer (its login page); the user
    name is their tokens' subject, the tenant they speak for. `python -m app.auth hash-secret
    PASSWORD` makes the hash."""

    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_.:@-]+$")
    password_hash: str = Field(pattern=r"^scrypt\$")
    scopes: list[Scope] = ["chat"]


class DiscoverySettings(BaseModel):
    """Replicas found in DNS: every A and AAAA record of `dns` (a Kubernetes headless Service's
    name) is a replica at `scheme://address:port`, resolved again every `interval_s`."""

    model_config = ConfigDict(extra="forbid")

    dns: DnsName
    port: int = Field(default=8000, ge=1, le=65535)
    scheme: Literal["http", "https"] = "http"
    interval_s: float = Field(default=5.0, gt=0, le=3600)
    # The DNS servers asked (`address` or `address:port`); empty: the system's (resolv.conf).
    nameservers: Nameservers = []


class PoolSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    region: str = "local"
    kind: PoolKind = "transformers"
    # Fixed replicas, replicas found in DNS (`discover`), or both.
    replicas: list[HttpUrl] = []
    discover: DiscoverySettings | None = None
    # Models this pool serves; when empty they are read from each replica's /v1/models.
    models: list[str] = []
    # Load (requests in flight plus queued in the engine) at which a replica is saturated;
    # when every replica of a region is, requests spill to the next region.
    max_load: int | None = Field(default=64, ge=1)
    # The engines' API key (vLLM's --api-key, our engine's SWITCHYARD_ENGINE_API_KEY), sent as a
    # bearer token on every request to them.
    api_key: SecretStr | None = None

    @model_validator(mode="after")
    def _has_replicas(self) -> "PoolSettings":
        if not self.replicas and self.discover is None:
            raise ValueError(f"pool {self.name!r} needs `replicas`, `discover`, or both")
        return self


class RateLimitSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_", extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    region: str = "local"
    # Processes serving the port. Each admits its share of every replica's max_load and of
    # max_queue; they share Redis for idempotency and limits, so more than one needs redis_url
    # and configured pools. Metrics are summed over them (Prometheus multiprocess mode).
    workers: int = Field(default=1, ge=1, le=64)
    # Proxies in front (an ingress) whose X-Forwarded-For and -Proto are believed: the address a
    # request came from is then its client's, which the sign-in and token throttles count by.
    forwarded_allow_ips: list[str] = ["127.0.0.1"]
    pools: list[PoolSettings] = []
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # HTTP limits, enforced before the app sees a request (app/api/http_limits.py): 431 over the
    # header bytes (request line, fields, trailers) or fields, 408 when a request's headers
    # do not arrive within header_timeout_s of its first byte, or its body stops coming (less
    # than 64 KiB of it in a body_timeout_s: large uploads at any useful speed go through).
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    max_header_fields: int = Field(default=100, ge=1)
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=60.0, gt=0)
    health_interval_s: float = Field(default=2.0, gt=0)
    health_timeout_s: float = Field(default=2.0, gt=0)
    stats_interval_s: float = Field(default=1.0, gt=0)
    # Routing: consistent hashing with bounded loads, nearest region first.
    load_factor: float = Field(default=1.25, ge=1.0, le=10.0)
    ring_vnodes: int = Field(default=160, ge=1, le=10_000)
    region_latencies_ms: dict[str, float] = {}
    # Keys remembered with the replica that served them last (it holds their newest prefix).
    route_memory: int = Field(default=65_536, ge=0)
    # Outlier ejection (circuit breaking) of replicas that keep failing.
    eject_after_failures: int = Field(default=5, ge=1)
    eject_base_s: float = Field(default=30.0, gt=0)
    eject_max_s: float = Field(default=300.0, gt=0)
    max_ejected_fraction: float = Field(default=0.5, ge=0, le=1)
    # Admission: requests waiting for a replica below its max_load, all tenants together,
    # and how long one may wait (its deadline too).
    max_queue: int = Field(default=256, ge=0)
    queue_timeout_s: float = Field(default=30.0, gt=0)
    # Deadlines: a request's own timeout header, else this; never more than the maximum.
    request_timeout_s: float = Field(default=600.0, gt=0)
    max_request_timeout_s: float = Field(default=3600.0, gt=0)
    # Retries, only before the first byte reaches the client, each on another replica.
    max_attempts: int = Field(default=3, ge=1, le=10)
    # Longest wait for an engine's response headers per attempt (default: the deadline).
    attempt_timeout_s: float | None = Field(default=None, gt=0)
    retry_backoff_s: float = Field(default=0.05, ge=0)  # full jitter: up to base * 2^n ...
    retry_backoff_max_s: float = Field(default=1.0, ge=0)  # ... and never more than this
    retry_budget_ratio: float = Field(default=0.1, ge=0, le=1)  # retries per request, over 10 s
    retry_budget_min: int = Field(default=3, ge=0)  # retries allowed per 10 s however quiet
    # Idempotency keys: records in Redis when a URL is set (shared by every worker and
    # gateway of the region), else in this process (the embedded default).
    redis_url: str | None = None
    # A claim's lease, renewed every third of it while its request runs: a dead gateway's keys
    # free within this long (docs/benchmarks.md: what renewing costs).
    idempotency_lease_s: float = Field(default=5.0, gt=0)
    # How long an answer waits for a store that is down before the client gets 503 instead of it.
    idempotency_settle_timeout_s: float = Field(default=10.0, ge=0)
    idempotency_retention_s: float = Field(default=86_400.0, gt=0)
    idempotency_max_answer_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    idempotency_memory_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1
    )  # in-process store; then keyed requests get 503
    # On SIGTERM: how long requests in flight may run on before open streams are ended.
    drain_timeout_s: float = Field(default=25.0, ge=0)
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=600.0, gt=0)
    max_upstream_connections: int = Field(default=1024, ge=1)
    default_model: str | None = None
    embedded_model: str | None = None
    embedded_start_timeout_s: float = Field(default=180.0, gt=0)
    # On the embedded default, a fine-tuning worker (`python -m finetune`) beside the engine.
    embedded_finetune_worker: bool = True
    data_dir: Path = Field(
        default=Path.home() / ".cache" / "switchyard",
        validation_alias=AliasChoices("SWITCHYARD_DATA_DIR", "data_dir"),
    )
    # Fine-tuning records (files, jobs, events, checkpoints): PostgreSQL in production
    # (`postgresql+asyncpg://user@host/db`); unset, SQLite in data_dir (the embedded default).
    database_url: str | None = None
    max_upload_bytes: int = Field(default=2 * 1024**3, ge=1024)  # one uploaded dataset
    # A tenant's share: the bytes of its files together, and its unfinished fine-tuning jobs.
    max_stored_bytes_per_tenant: int = Field(default=20 * 1024**3, ge=1024)
    max_active_jobs_per_tenant: int = Field(default=4, ge=1)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    log_format: Literal["text", "json"] = "text"  # json: one object a line, with the request's fields
    # Traces: exported over OTLP/HTTP to this collector (e.g. http://127.0.0.1:4318) when set.
    otlp_endpoint: str | None = None
    otlp_sample_ratio: float = Field(default=1.0, ge=0, le=1)  # traces begun here that are recorded
    # Authentication: OAuth2 bearer JWT access tokens (RFC 9068). `builtin`: this gateway
    # issues them (/oauth/token) to `auth_clients` and signs with a key kept in data_dir;
    # `external`: another issuer's (an OIDC provider), verified against its JWKS;
    # `disabled`: no authentication, refused unless the gateway listens on loopback only.
    auth_mode: Literal["builtin", "external", "disabled"] = "builtin"
    auth_issuer: str | None = None  # the exact `iss`; builtin default: http://{host}:{port}
    auth_audience: str = Field(default="switchyard", min_length=1)  # must be in every token's `aud`
    auth_jwks: str | None = None  # external: the issuer's JWKS, a URL or a file
    auth_algorithms: list[AsymmetricAlgorithm] = Field(
        default=["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"],
        min_length=1,
    )
    auth_leeway_s: float = Field(default=30.0, ge=0, le=60)  # on exp and nbf
    auth_token_ttl_s: int = Field(default=3600, ge=60, le=86_400)  # builtin: tokens' lifetime
    auth_clients: list[AuthClientSettings] = []
    auth_users: list[AuthUserSettings] = []  # builtin: who may sign in to the console
    # The console's OAuth2 client id: a public client with PKCE (builtin: this gateway's own;
    # external: the id the issuer knows the console by).
    console_client_id: str = Field(default="switchyard-console", min_length=1, max_length=255)
    console_dir: Path | None = None  # the console's build; unset: console/dist of this repository
    # The region's sync sidecar (e.g. http://sync:8300): /sync/adapters here relays to its
    # /adapters, for the console's adapters page (tokens with scope `adapters` or `admin`).
    sync_url: HttpUrl | None = None
    # Per-tenant (token subject) rate limits, requests and tokens per minute (none by default);
    # `rate_limits` sets them for named subjects. In Redis when redis_url is set.
    rate_limit_rpm: int | None = Field(default=None, ge=1)
    rate_limit_tpm: int | None = Field(default=None, ge=1)
    rate_limits: dict[str, RateLimitSettings] = {}

    @model_validator(mode="after")
    def _is_consistent(self) -> "GatewaySettings":
        if self.auth_mode == "disabled" and self.host not in LOOPBACK_HOSTS:
            raise ValueError(f"auth_mode disabled is refused unless host is a loopback address, not {self.host!r}")
        if self.auth_mode == "external" and not (self.auth_issuer and self.auth_jwks):
            raise ValueError("auth_mode external needs auth_issuer and auth_jwks (the issuer's JWKS URL or file)")
        subjects = [c.client_id for c in self.auth_clients] + [u.username for u in self.auth_users]
        if repeated := sorted({s for s in subjects if subjects.count(s) > 1}):
            raise ValueError(f"a subject names one tenant: clients and users share no name; repeated: {repeated}")
        if self.console_client_id in subjects:
            raise ValueError(f"console_client_id {self.console_client_id!r} is a client's or user's name")
        if self.workers > 1 and self.embedded:
            raise ValueError("workers > 1 needs configured pools: the embedded engine belongs to one process")
        if self.workers > 1 and not self.redis_url:
            raise ValueError("workers > 1 needs redis_url: idempotency records and rate limits must be shared")
        return self

    def worker_share(self, amount: int) -> int:
        """One worker's part of a gateway-wide bound (rounded up: never zero)."""
        return -(-amount // self.workers)

    @property
    def issuer(self) -> str:
        return self.auth_issuer or f"http://{self.host}:{self.port}"

    @field_validator("otlp_endpoint")
    @classmethod
    def _collector_url(cls, endpoint: str | None) -> str | None:
        if endpoint and (error := collector_url_error(endpoint)) is not None:
            raise ValueError(error)
        return endpoint or None

    @field_validator("pools")
    @classmethod
    def _unique_pool_names(cls, pools: list[PoolSettings]) -> list[PoolSettings]:
        names = [p.name for p in pools]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"pool names must be unique; repeated: {', '.join(duplicates)}")
        urls = [str(url).rstrip("/") for pool in pools for url in pool.replicas]
        repeated = sorted({u for u in urls if urls.count(u) > 1})
        if repeated:
            raise ValueError(f"a replica belongs to one pool only; repeated: {', '.join(repeated)}")
        return pools

    @property
    def embedded(self) -> bool:
        """No pools configured: the gateway runs its own local engine."""
        return not self.pools


class _ConfigLocation(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_", extra="ignore")

    config: Path | None = None


def load_settings(overrides: Mapping[str, Any] | None = None, config_file: Path | None = None) -> GatewaySettings:
    """Settings from the YAML file (`config_file` or `SWITCHYARD_CONFIG`), the environment and `overrides`."""
    path = config_file or _ConfigLocation().config
    file_values = _read_yaml(path) if path else {}

    class _Layered(GatewaySettings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return init_settings, env_settings, InitSettingsSource(settings_cls, file_values)

    return _Layered(**dict(overrides or {}))


def collector_url_error(endpoint: str) -> str | None:
    """Why `endpoint` is not an OTLP/HTTP collector's base URL (None when it is one)."""
    url = urlsplit(endpoint)
    try:
        url.port  # noqa: B018 (read for its check: a port that is no number)
    except ValueError:
        return f"{endpoint!r} has a port that is not a number"
    if url.scheme not in ("http", "https") or not url.hostname:
        example = "http(s)://host[:port][/path], such as http://127.0.0.1:4318"
        return f"an OTLP/HTTP collector's URL is {example}, not {endpoint!r}"
    if url.query or url.fragment:
        return f"an OTLP/HTTP collector's URL has no query or fragment: {endpoint!r}"
    return None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read the configuration file {path}: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ValueError(f"the configuration file {path} must hold a mapping of settings")
    return loaded
