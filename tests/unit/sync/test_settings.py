"""The sidecar's settings refuse what would leave it open beyond loopback: no authentication, or
peers without a peer key (or a short one); the JWKS defaults to the trusted issuer's."""

import pytest
from pydantic import ValidationError

from sync.settings import SyncSettings


def test_settings_that_would_open_the_sidecar_are_refused() -> None:
    SyncSettings(auth_mode="disabled")  # loopback: every caller is local
    SyncSettings(peers=["http://127.0.0.1:9"])  # loopback, no peer key: peer routes open to local callers
    with pytest.raises(ValidationError, match="shorter than 16"):
        SyncSettings(peer_key="short")
    with pytest.raises(ValidationError, match="peer_key"):
        SyncSettings(host="::", peers=["http://10.0.0.2:8300"])
    assert SyncSettings().jwks == "http://127.0.0.1:8000/.well-known/jwks.json"  # the embedded gateway's
    assert SyncSettings(auth_issuer="https://id.example/").jwks == "https://id.example/.well-known/jwks.json"
