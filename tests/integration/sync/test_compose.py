"""docker-compose.yml, two regions: valid for the Compose specification's schema; the internal
plane internal (only the gateways and Grafana published); every variable a setting of the
service's part; the engines requiring their API key and all their callers (both gateways'
pools, the region's sidecar) sending it; each gateway routing to its own region's engine and
spilling to the other's; the sidecars peering with a key and trusting their gateway's issuer;
Prometheus scraping what runs. Checked on the settings each service would load once compose
has filled in its variables."""

import re
import subprocess
import sys
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from app.settings import GatewaySettings, load_settings
from engines.transformers.settings import EngineSettings
from harness.servers import ROOT
from sync.settings import SyncSettings

VARIABLE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?::(?P<kind>[?-])(?P<text>[^}]*))?\}")
KEYS = {"SWITCHYARD_ENGINE_API_KEY": "k" * 32, "SWITCHYARD_SYNC_PEER_KEY": "p" * 32}
PARTS: dict[str, type[BaseSettings]] = {
    "app": GatewaySettings,
    "engines.transformers": EngineSettings,
    "sync": SyncSettings,
}


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


def _part(service: dict[str, Any]) -> str | None:
    command = service.get("command", [])
    return command[2] if command[:2] == ["python", "-m"] else None


def _sidecar_settings(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> SyncSettings:
    for name, value in _environment(service, KEYS).items():
        monkeypatch.setenv(name, value)
    flags: dict[str, list[str]] = {}
    command = service["command"][3:]  # after `python -m sync`
    for flag, value in zip(command[::2], command[1::2], strict=True):
        flags.setdefault(flag, []).append(value)
    return SyncSettings(
        region=flags["--region"][0],
        host=flags["--host"][0],
        port=int(flags["--port"][0]),
        engines=flags["--engine"],
        peers=flags.get("--peer", []),
    )


def _gateway_settings(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> GatewaySettings:
    for name, value in _environment(service, KEYS).items():
        monkeypatch.setenv(name, value)
    return load_settings()


def test_the_file_is_valid_for_the_compose_specification() -> None:
    check = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
    run = subprocess.run([*check, str(ROOT / "docker-compose.yml")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_only_the_gateways_and_grafana_are_published() -> None:
    services = _compose()
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"gateway-eu", "gateway-us", "grafana"}
    assert not any(service.get("network_mode") == "host" for service in services.values())


def test_every_variable_is_a_setting_of_its_part_and_one_image_runs_them_all() -> None:
    services = _compose()
    images = set()
    for name, service in services.items():
        part = _part(service)
        if part is None:
            continue
        images.add(service["image"])
        settings = PARTS[part]
        prefix = str(settings.model_config.get("env_prefix", ""))
        known = {f"{prefix}{field}".upper() for field in settings.model_fields} | {"SWITCHYARD_DATA_DIR"}
        assert set(service.get("environment", {})) <= known, (name, set(service["environment"]) - known)
    assert len(images) == 1


def test_the_engines_need_their_key_and_all_their_callers_send_it(monkeypatch: pytest.MonkeyPatch) -> None:
    services = _compose()
    for region in ("eu", "us"):
        with pytest.raises(LookupError, match="SWITCHYARD_ENGINE_API_KEY"):
            _environment(services[f"engine-{region}"], {})  # compose refuses to start an open engine
        assert _environment(services[f"engine-{region}"], KEYS)["SWITCHYARD_ENGINE_API_KEY"] == "k" * 32
        pools = _gateway_settings(services[f"gateway-{region}"], monkeypatch).pools
        assert all(pool.api_key is not None and pool.api_key.get_secret_value() == "k" * 32 for pool in pools)
        sidecar = _sidecar_settings(services[f"sync-{region}"], monkeypatch)
        assert sidecar.engine_api_key is not None
        assert sidecar.engine_api_key.get_secret_value() == "k" * 32


def test_each_gateway_routes_to_its_region_and_spills_to_the_other(monkeypatch: pytest.MonkeyPatch) -> None:
    services = _compose()
    for region, other in (("eu", "us"), ("us", "eu")):
        settings = _gateway_settings(services[f"gateway-{region}"], monkeypatch)
        assert settings.region == region
        pools = {pool.region: [str(url) for url in pool.replicas] for pool in settings.pools}
        assert pools == {region: [f"http://engine-{region}:8100/"], other: [f"http://engine-{other}:8100/"]}
        assert settings.redis_url == f"redis://redis-{region}:6379/0"
        assert services[f"gateway-{region}"]["depends_on"][f"engine-{region}"]["condition"] == "service_healthy"


def test_the_sidecars_peer_with_a_key_and_trust_their_gateways_issuer(monkeypatch: pytest.MonkeyPatch) -> None:
    services = _compose()
    for region, other in (("eu", "us"), ("us", "eu")):
        gateway = _environment(services[f"gateway-{region}"], KEYS)
        sidecar = _sidecar_settings(services[f"sync-{region}"], monkeypatch)
        assert sidecar.auth_mode == "jwt"
        assert sidecar.auth_issuer == gateway["SWITCHYARD_AUTH_ISSUER"] == f"http://gateway-{region}:8000"
        assert [str(peer) for peer in sidecar.peers] == [f"http://sync-{other}:8300/"]
        assert sidecar.peer_key is not None
        with pytest.raises(LookupError, match="SWITCHYARD_SYNC_PEER_KEY"):
            _environment(services[f"sync-{region}"], {"SWITCHYARD_ENGINE_API_KEY": "k" * 32})


def test_prometheus_scrapes_the_services_on_the_network() -> None:
    services = _compose()
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = {
        t.split(":")[0] for job in config["scrape_configs"] for group in job["static_configs"] for t in group["targets"]
    }
    expected = {f"{part}-{region}" for part in ("gateway", "engine", "sync") for region in ("eu", "us")}
    assert targets == expected
    assert targets <= set(services)
