"""docker-compose.yml keeps the internal plane internal: only the gateway and Grafana are
published, the engine requires its API key and both of its callers (the gateway's pool, the
sync sidecar) send the same one, and the sidecar trusts the gateway's issuer. Checked on the
settings each service would load once compose has filled in its variables."""

import re
from typing import Any

import pytest
import yaml

from app.settings import load_settings
from harness.servers import ROOT
from sync.settings import SyncSettings

VARIABLE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?::(?P<kind>[?-])(?P<text>[^}]*))?\}")


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return compose["services"]  # type: ignore[no-any-return]


def _interpolate(value: str, variables: dict[str, str]) -> str:
    """What compose makes of `${NAME}`, `${NAME:-default}` and `${NAME:?error}`."""

    def one(match: re.Match[str]) -> str:
        name, kind, text = match["name"], match["kind"], match["text"]
        if variables.get(name):
            return variables[name]
        if kind == "?":
            raise LookupError(f"{name}: {text}")
        return text or ""

    return VARIABLE.sub(one, value)


def _environment(service: dict[str, Any], variables: dict[str, str]) -> dict[str, str]:
    return {name: _interpolate(str(value), variables) for name, value in service.get("environment", {}).items()}


def _sidecar_settings(
    service: dict[str, Any], monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]
) -> SyncSettings:
    for name, value in _environment(service, variables).items():
        monkeypatch.setenv(name, value)
    command = service["command"]
    flags = dict(zip(command[3::2], command[4::2], strict=True))  # after `python -m sync`
    return SyncSettings(region=flags["--region"], host=flags["--host"], port=int(flags["--port"]),
                        engines=[flags["--engine"]])  # fmt: skip


def test_only_the_gateway_and_grafana_are_published() -> None:
    services = _compose()
    assert {name for name, service in services.items() if service.get("ports")} == {"gateway", "grafana"}
    assert not any(service.get("network_mode") == "host" for service in services.values())


def test_the_engine_needs_its_key_and_its_callers_send_it(monkeypatch: pytest.MonkeyPatch) -> None:
    services = _compose()
    with pytest.raises(LookupError, match="SWITCHYARD_ENGINE_API_KEY"):
        _environment(services["engine"], {})  # compose refuses to start an open engine
    variables = {"SWITCHYARD_ENGINE_API_KEY": "k" * 32}
    assert _environment(services["engine"], variables)["SWITCHYARD_ENGINE_API_KEY"] == "k" * 32
    for name, value in _environment(services["gateway"], variables).items():
        monkeypatch.setenv(name, value)
    [pool] = load_settings().pools
    assert pool.api_key is not None
    assert pool.api_key.get_secret_value() == "k" * 32
    sidecar = _sidecar_settings(services["sync"], monkeypatch, variables)
    assert sidecar.engine_api_key is not None
    assert sidecar.engine_api_key.get_secret_value() == "k" * 32


def test_the_sidecar_trusts_the_gateways_issuer_and_takes_no_unkeyed_peers(monkeypatch: pytest.MonkeyPatch) -> None:
    services = _compose()
    variables = {"SWITCHYARD_ENGINE_API_KEY": "k" * 32}
    gateway = _environment(services["gateway"], variables)
    sidecar = _sidecar_settings(services["sync"], monkeypatch, variables)
    assert sidecar.auth_mode == "jwt"
    assert sidecar.auth_issuer == gateway["SWITCHYARD_AUTH_ISSUER"] == "http://gateway:8000"
    assert sidecar.jwks == "http://gateway:8000/.well-known/jwks.json"
    assert sidecar.host == "0.0.0.0"
    assert sidecar.peer_key is None  # no peers here; its peer routes are closed without a key
    with pytest.raises(ValueError, match="peer_key"):
        SyncSettings(host=sidecar.host, peers=["http://other-region:8300"])
    keyed = _sidecar_settings(services["sync"], monkeypatch, variables | {"SWITCHYARD_SYNC_PEER_KEY": "p" * 32})
    assert keyed.peer_key is not None


def test_prometheus_scrapes_the_services_on_the_network() -> None:
    services = _compose()
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = [t for job in config["scrape_configs"] for group in job["static_configs"] for t in group["targets"]]
    assert {target.split(":")[0] for target in targets} == {"gateway", "engine", "sync"}
    assert {target.split(":")[0] for target in targets} <= set(services)
