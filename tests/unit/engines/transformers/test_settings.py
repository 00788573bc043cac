"""The Transformers engine's settings from its command line: the API key, kept out of every dump."""

import pytest

from engines.transformers.__main__ import parse_args


def test_the_flag_sets_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SWITCHYARD_ENGINE_API_KEY", raising=False)
    settings = parse_args(["--api-key", "from-the-flag-0123"])
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == "from-the-flag-0123"
    assert "from-the-flag-0123" not in repr(settings), "the key never shows in a settings dump"
    assert parse_args([]).api_key is None
