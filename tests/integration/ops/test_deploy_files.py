"""The shipped configuration files load as the gateway would load them."""

import json
import tomllib

import yaml

from app.settings import load_settings
from harness.servers import ROOT


def test_example_settings_file_loads() -> None:
    settings = load_settings(config_file=ROOT / "deploy" / "gateway.example.yaml")
    assert settings.region == "eu-west"
    assert {p.kind for p in settings.pools} == {"vllm", "transformers"}


def test_compose_builds_the_image_from_the_dockerfile() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    build = compose["x-switchyard"]["build"]
    assert (ROOT / build["context"] / build["dockerfile"]).exists()


def test_env_example_names_every_setting() -> None:
    from app.settings import GatewaySettings
    from engines.transformers.settings import EngineSettings
    from engines.vllm.settings import VllmSettings
    from sync.settings import SyncSettings

    text = (ROOT / ".env.example").read_text()
    for field in GatewaySettings.model_fields:
        assert f"SWITCHYARD_{field.upper()}=" in text, field
    every = (
        ("SWITCHYARD_ENGINE_", EngineSettings),
        ("SWITCHYARD_VLLM_", VllmSettings),
        ("SWITCHYARD_SYNC_", SyncSettings),
    )
    for prefix, settings in every:
        for field in settings.model_fields:
            name = "SWITCHYARD_DATA_DIR" if field == "data_dir" else f"{prefix}{field.upper()}"
            assert f"{name}=" in text, field
    assert "SWITCHYARD_CONFIG=" in text
    json.loads(next(line for line in text.splitlines() if "SWITCHYARD_POOLS=" in line).split("=", 1)[1])


def test_readme_starts_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```sh", 1)[1].split("```", 1)[0]
    assert [line.split()[:2] for line in first_block.strip().splitlines()] == [["make", "run"], ["make", "test"]]
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("make test")


def test_pyproject_pins_torch() -> None:
    assert '"torch==2.13.0"' in (ROOT / "pyproject.toml").read_text()


def test_the_image_holds_every_package_the_project_installs() -> None:
    """A package left out of the Dockerfile breaks the image only at run time (an ImportError)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {name.rstrip("*") for name in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {
        line.split()[1]
        for line in (ROOT / "deploy" / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ") and len(line.split()) == 3
    }
    assert packages <= copied, sorted(packages - copied)
