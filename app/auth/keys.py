"""The built-in issuer's signing keys: made on first start, kept on disk, rotatable.

`<data_dir>/auth/signing-keys.json` (mode 0600 in a 0700 folder) holds private JWKs, oldest
first; the newest signs. After a rotation the older keys stay in the published JWKS until
the tokens they signed have expired (`token_ttl_s` after the next key was made), then they
are dropped from the file. Several processes may share the file (the gateway, the `token`
command): it is read again when it changes, and written by atomic rename.
"""

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, Key, KeySet

from app.settings import GatewaySettings
from oauth import find_key

__all__ = ["SIGNING_ALGORITHM", "LocalKeys", "SigningKeys", "mint"]

SIGNING_ALGORITHM = "ES256"
_CHECK_EVERY_S = 2.0  # how often the file's modification time is looked at


class SigningKeys:
    def __init__(self, folder: Path, *, token_ttl_s: float) -> None:
        self.path = folder / "signing-keys.json"
        self._token_ttl_s = token_ttl_s
        self._entries: list[dict[str, Any]] = []  # private JWK + "created_at"
        self._mtime_ns = -1
        self._checked = 0.0
        self._keys = KeySet([])
        self._public: dict[str, Any] = {"keys": []}
        if not self.path.exists():
            self._write([self._new_entry()])
        self._load()

    def current(self) -> ECKey:
        """The key that signs new tokens."""
        self.refresh()
        key = self._keys.keys[-1]
        assert isinstance(key, ECKey)
        return key

    def key_set(self) -> KeySet:
        self.refresh()
        return self._keys

    def public_jwks(self) -> dict[str, Any]:
        self.refresh()
        return self._public

    def rotate(self) -> str:
        """A new signing key; the older ones stay published until their tokens expire. Its kid."""
        self._load()
        entry = self._new_entry()
        self._write([*self._entries, entry])
        self._load()
        return str(entry["kid"])

    def refresh(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < _CHECK_EVERY_S:
            return
        self._checked = now
        if self.path.stat().st_mtime_ns != self._mtime_ns:
            self._load()

    def _load(self) -> None:
        stat = self.path.stat()
        entries = json.loads(self.path.read_text())["keys"]
        live = self._live(entries, time.time())
        if len(live) < len(entries):
            try:
                self._write(live)
                stat = self.path.stat()
            except OSError:  # a read-only key file (a mounted Secret): the retired key is dropped here only
                pass
        self._entries, self._mtime_ns = live, stat.st_mtime_ns
        self._keys = KeySet([ECKey.import_key({k: v for k, v in e.items() if k != "created_at"}) for e in live])
        self._public = {
            "keys": [{**key.as_dict(private=False), "use": "sig", "alg": SIGNING_ALGORITHM} for key in self._keys]
        }

    def _live(self, entries: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
        """Keys whose tokens may still be valid: a key is retired `token_ttl_s` after the next one."""
        return [e for e, newer in zip(entries, [*entries[1:], None], strict=True)
                if newer is None or newer["created_at"] + self._token_ttl_s > now]  # fmt: skip

    @staticmethod
    def _new_entry() -> dict[str, Any]:
        key = ECKey.generate_key("P-256", private=True)
        key.ensure_kid()  # the RFC 7638 thumbprint
        return {**key.as_dict(private=True), "created_at": time.time()}

    def _write(self, entries: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump({"keys": entries}, file)
        os.replace(temporary, self.path)


class LocalKeys:
    """The built-in issuer's keys as a verifier's key source (`oauth.KeySource`), read again
    when a token names a key not known yet (a rotation by another process)."""

    def __init__(self, signing: SigningKeys, *, min_reload_s: float = 1.0) -> None:
        self._signing = signing
        self._min_reload_s = min_reload_s
        self._reloaded = 0.0

    async def key(self, kid: str | None) -> Key | None:
        found = find_key(self._signing.key_set(), kid)
        now = time.monotonic()
        if found is None and now - self._reloaded >= self._min_reload_s:
            self._reloaded = now
            self._signing.refresh(force=True)
            found = find_key(self._signing.key_set(), kid)
        return found


def mint(settings: GatewaySettings, *, subject: str, scopes: list[str], ttl_s: int) -> str:
    """An access token from the built-in issuer's current key, for `subject` with `scopes`:
    development tokens, and the ones the gateway gives its own fine-tuning worker."""
    keys = SigningKeys(settings.data_dir / "auth", token_ttl_s=settings.auth_token_ttl_s)
    key = keys.current()
    now = int(time.time())
    claims = {
        "iss": settings.issuer,
        "sub": subject,
        "aud": settings.auth_audience,
        "client_id": subject,
        "scope": " ".join(scopes),
        "iat": now,
        "exp": now + ttl_s,
        "jti": secrets.token_urlsafe(12),
    }
    header = {"alg": SIGNING_ALGORITHM, "typ": "at+jwt", "kid": key.kid}
    return jwt.encode(header, claims, key, algorithms=[SIGNING_ALGORITHM])
