"""The built-in issuer's signing keys (app/auth/keys.py), with a gateway in process: kept
private on disk, and rotated (by `python -m app.auth rotate-key`) without refusing the
tokens the older key signed."""

import asyncio
import base64
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey

from app.auth.__main__ import main
from app.auth.keys import SigningKeys
from tests.unit.app.auth.conftest import ISSUER, Gateway


def _signed_by(key: ECKey) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": "alice", "aud": "switchyard", "exp": now + 600, "iat": now, "scope": "chat"}
    return jwt.encode({"alg": "ES256", "typ": "at+jwt", "kid": key.kid}, claims, key, algorithms=["ES256"])


def test_the_key_is_kept_private_on_disk(issuing: Gateway) -> None:
    auth_dir = issuing.settings.data_dir / "auth"
    assert auth_dir.stat().st_mode & 0o777 == 0o700
    assert (auth_dir / "signing-keys.json").stat().st_mode & 0o777 == 0o600


async def test_key_rotation_keeps_old_tokens_valid(
    issuing: Gateway, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    old = issuing.signing_key()
    old_token = _signed_by(old)
    for name in [name for name in os.environ if name.startswith("SWITCHYARD_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SWITCHYARD_DATA_DIR", str(issuing.settings.data_dir))
    monkeypatch.setenv("SWITCHYARD_AUTH_ISSUER", ISSUER)
    main(["rotate-key"])
    new = issuing.signing_key()
    assert capsys.readouterr().out == f"new signing key: {new.kid}\n"
    assert new.kid != old.kid
    assert (await issuing.chat(_signed_by(new))).status_code == 200  # an unknown kid: the file is read again
    assert (await issuing.chat(old_token)).status_code == 200
    kids = {key["kid"] for key in (await issuing.client.get("/.well-known/jwks.json")).json()["keys"]}
    assert kids == {old.kid, new.kid}
    await asyncio.sleep(2.1)  # the issuer looks at the key file every 2 s
    issued = (await issuing.token("svc")).json()["access_token"]
    assert json.loads(base64.urlsafe_b64decode(issued.split(".")[0] + "=="))["kid"] == new.kid


def test_a_read_only_key_file_with_a_retired_key_still_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key file mounted from a Kubernetes Secret cannot be written: the retired key is
    dropped in memory, and the newest still signs."""
    keys = SigningKeys(tmp_path, token_ttl_s=60)
    newest = keys.rotate()
    entries = json.loads(keys.path.read_text())["keys"]
    entries[1]["created_at"] -= 3600  # the older key's tokens have all expired
    keys.path.write_text(json.dumps({"keys": entries}))

    def read_only(self: SigningKeys, entries: list[dict[str, Any]]) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(SigningKeys, "_write", read_only)
    loaded = SigningKeys(tmp_path, token_ttl_s=60)
    assert loaded.current().kid == newest
    assert [key["kid"] for key in loaded.public_jwks()["keys"]] == [newest]
