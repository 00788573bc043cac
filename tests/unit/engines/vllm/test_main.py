"""The vLLM launcher (`python -m engines.vllm`): the key it hands vLLM stays off the command line,
and with a key our guard goes in beside vLLM's own."""

import os

import pytest

from engines.vllm.__main__ import GUARD, parse_args, vllm_command, vllm_environment
from harness.servers import ROOT


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["--api-key", "key-one-0123456789"], {}, "key-one-0123456789"),
        ([], {"SWITCHYARD_VLLM_API_KEY": "key-two-0123456789"}, "key-two-0123456789"),
        ([], {"SWITCHYARD_ENGINE_API_KEY": "key-three-01234567"}, "key-three-01234567"),
        ([], {"VLLM_API_KEY": "vllms-own-0123456789"}, "vllms-own-0123456789"),  # never leaves routes open
        ([], {}, None),
    ],
)
def test_the_vllm_launcher_hands_its_key_to_vllm_off_the_command_line(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], env: dict[str, str], expected: str | None
) -> None:
    for name in ("SWITCHYARD_VLLM_API_KEY", "SWITCHYARD_ENGINE_API_KEY", "VLLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings, extra = parse_args(argv)
    assert vllm_environment(settings).get("VLLM_API_KEY") == expected
    # vLLM reads VLLM_API_KEY as its --api-key; on the command line the key would show in `ps`.
    command = vllm_command(settings, "/model", "m", extra)
    assert not any(expected and expected in part for part in command)
    if expected is None:
        assert "--middleware" not in command
        return
    # With a key, our guard goes in too: vLLM's own guards /v1 and a few prefixes only.
    assert command[command.index("--middleware") + 1] == GUARD == "engines.vllm.guard.VllmApiKeyGuard"
    assert vllm_environment(settings)["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)  # importable from anywhere
