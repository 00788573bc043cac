"""Settings (app/settings.py): YAML file, then environment, then explicit overrides; the
checks that refuse settings that cannot work together."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.settings import GatewaySettings, load_settings

POOLS_YAML = """
region: eu
pools:
  - name: eu-a
    region: eu
    kind: vllm
    replicas: ["http://10.0.0.1:8000", "http://10.0.0.2:8000/"]
  - name: us-a
    region: us
    replicas: ["http://10.1.0.1:8000"]
    models: [m1]
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(POOLS_YAML)
    return path


def test_yaml_file_is_read(config: Path) -> None:
    settings = load_settings(config_file=config)
    assert settings.region == "eu"
    assert [p.name for p in settings.pools] == ["eu-a", "us-a"]
    assert settings.pools[0].kind == "vllm"
    assert settings.pools[1].models == ["m1"]
    assert not settings.embedded


def test_environment_beats_the_file_and_overrides_beat_both(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHYARD_REGION", "us")
    monkeypatch.setenv("SWITCHYARD_PORT", "9000")
    settings = load_settings({"port": 9100}, config_file=config)
    assert settings.region == "us"
    assert settings.port == 9100


def test_config_path_from_the_environment(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHYARD_CONFIG", str(config))
    assert load_settings().region == "eu"


def test_pools_as_json_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHYARD_POOLS", '[{"name": "p", "replicas": ["http://127.0.0.1:1"]}]')
    [pool] = load_settings().pools
    assert pool.kind == "transformers"
    assert pool.region == "local"


def test_no_pools_means_the_embedded_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWITCHYARD_POOLS", raising=False)
    assert load_settings().embedded


@pytest.mark.parametrize(
    ("yaml_text", "fragment"),
    [
        ("pools: [{name: a, replicas: ['http://x:1']}, {name: a, replicas: ['http://y:1']}]", "unique"),
        ("pools: [{name: a, replicas: []}]", "replicas"),
        ("pools: [{name: a, kind: tgi, replicas: ['http://x:1']}]", "kind"),
        ("pools: [{name: a, replicas: ['not a url']}]", "replicas"),
        ("max_body_bytes: 10", "max_body_bytes"),
        ("no_such_setting: 1", "no_such_setting"),
        ("otlp_endpoint: collector:4318", "OTLP/HTTP collector"),
        ("otlp_endpoint: 'http://collector:port'", "port that is not a number"),
        ("otlp_endpoint: 'http://collector:4318?key=1'", "no query or fragment"),
        ("otlp_endpoint: 'grpc://collector:4317'", "OTLP/HTTP collector"),
        ("otlp_sample_ratio: 1.5", "otlp_sample_ratio"),
    ],
)
def test_bad_settings_are_refused(tmp_path: Path, yaml_text: str, fragment: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ValidationError, match=fragment):
        load_settings(config_file=path)


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        load_settings(config_file=path)


def test_data_paths_are_not_hardcoded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHYARD_DATA_DIR", str(tmp_path))
    assert load_settings().data_dir == tmp_path


def test_a_replica_belongs_to_one_pool() -> None:
    with pytest.raises(ValueError, match="one pool only"):
        GatewaySettings.model_validate(
            {"pools": [{"name": "a", "replicas": ["http://x:1"]}, {"name": "b", "replicas": ["http://x:1/"]}]}
        )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"workers": 2, "redis_url": "redis://127.0.0.1:6379/0"}, "needs configured pools"),
        ({"workers": 2, "pools": [{"name": "p", "replicas": ["http://127.0.0.1:1"]}]}, "needs redis_url"),
    ],
)
def test_several_workers_need_pools_and_redis(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_settings(overrides)


def test_each_worker_admits_its_share(tmp_path: Path) -> None:
    settings = load_settings({"workers": 3, "redis_url": "redis://x", "max_queue": 10, "data_dir": tmp_path,
                              "pools": [{"name": "p", "replicas": ["http://127.0.0.1:1"], "max_load": 8}]})  # fmt: skip
    assert settings.worker_share(settings.max_queue) == 4
    assert settings.worker_share(8) == 3
    assert settings.worker_share(1) == 1
