"""Fakes of the nodes around the router and the sidecar: a replica for router tests (plain
fields where the gateway has live stats), an engine that refuses to load the adapter names
it is told to (behind the engine's real HTTP routes), and an OAuth2 issuer whose tokens the
sync sidecar checks against the JWKS file it writes."""

import json
import secrets
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from joserfc import jwt
from joserfc.jwk import ECKey

from engines.base import InvalidRequest
from engines.fake import FakeEngine
from router import Decision, Router

__all__ = ["FakeIssuer", "FakeNode", "RefusingEngine", "decide", "fake_nodes"]


@dataclass(eq=False)
class FakeNode:
    name: str
    region: str = "eu"
    group: str = "pool"
    load: int = 0
    capacity: int | None = None
    available: bool = True
    models: frozenset[str] = frozenset({"m"})
    adapters: frozenset[str] = field(default_factory=frozenset)

    def serves(self, model: str) -> bool:
        return model in self.models

    def holds(self, adapter: str) -> bool:
        return adapter in self.adapters


def fake_nodes(count: int, region: str = "eu", *, capacity: int | None = None) -> list[FakeNode]:
    return [
        FakeNode(f"http://{region}-{i}.internal:8000", region, f"{region}-pool", capacity=capacity)
        for i in range(count)
    ]


def decide(
    router: Router[FakeNode],
    key: str,
    now: float = 0.0,
    *,
    model: str = "m",
    adapter: str | None = None,
    exclude: Collection[str] = (),
) -> Decision[FakeNode]:
    """A decision that must exist."""
    decision = router.route(key, model, now, adapter=adapter, exclude=exclude)
    assert decision is not None, f"no route for {key}"
    return decision


class RefusingEngine(FakeEngine):
    """A fake engine whose adapter loads fail for the names in `refuse` (as an engine refuses
    a name it serves as a base model, or a rank it cannot hold); it records every load."""

    def __init__(self, *, model_name: str = "fake-model") -> None:
        super().__init__(model_name=model_name)
        self.max_loras = 8
        self.refuse: set[str] = set()
        self.loads: list[str] = []

    async def load_adapter(self, name: str, path: str, *, replace: bool = False) -> None:
        self.loads.append(name)
        if name in self.refuse:
            raise InvalidRequest(f"The fake engine refuses to load {name!r}.", "lora_name")
        await super().load_adapter(name, path, replace=replace)


class FakeIssuer:
    """An issuer of RFC 9068 access tokens (ES256) with its public JWKS in a file, and the
    sidecar settings that trust it, with a peer key for the sidecars to share."""

    def __init__(self, folder: Path, *, issuer: str = "https://issuer.test", audience: str = "switchyard") -> None:
        self.issuer, self.audience = issuer, audience
        self.key = ECKey.generate_key("P-256", parameters={"kid": secrets.token_hex(4)})
        self.jwks = folder / "jwks.json"
        self.jwks.write_text(json.dumps({"keys": [self.key.as_dict(private=False)]}))
        self.peer_key = secrets.token_urlsafe(24)

    def token(self, *scopes: str, subject: str = "operator", **claims: object) -> str:
        now = int(time.time())
        body: dict[str, object] = {"iss": self.issuer, "aud": self.audience, "sub": subject, "scope": " ".join(scopes)}
        body |= {"iat": now, "exp": now + 600, "jti": secrets.token_hex(8)} | claims
        return jwt.encode({"alg": "ES256", "typ": "at+jwt", "kid": self.key.kid}, body, self.key, algorithms=["ES256"])

    def headers(self, *scopes: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token(*scopes)}"}

    def sidecar_env(self) -> dict[str, str]:
        return {
            "SWITCHYARD_SYNC_AUTH_ISSUER": self.issuer,
            "SWITCHYARD_SYNC_AUTH_JWKS": str(self.jwks),
            "SWITCHYARD_SYNC_AUTH_AUDIENCE": self.audience,
            "SWITCHYARD_SYNC_PEER_KEY": self.peer_key,
        }
