"""What the API's dependencies (app/api/deps.py) make of a caller, through a gateway in process
with the built-in issuer: each route's scope, and the tenant a token speaks for (its subject),
whose idempotency keys are its own."""

from app.auth.keys import mint
from tests.unit.app.auth.conftest import Gateway


async def test_scopes_per_route(issuing: Gateway) -> None:
    svc = (await issuing.token("svc")).json()["access_token"]
    ops = (await issuing.token("ops")).json()["access_token"]
    headers = {"authorization": f"Bearer {svc}"}
    refused = await issuing.client.get("/admin/pools", headers=headers)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "insufficient_scope"
    assert refused.headers["www-authenticate"] == 'Bearer realm="switchyard", error="insufficient_scope", scope="admin"'
    assert (await issuing.client.get("/status", headers=headers)).status_code == 403
    assert (await issuing.client.get("/admin/pools", headers={"authorization": f"Bearer {ops}"})).status_code == 200
    assert (await issuing.client.get("/health")).status_code == 200  # probes need no token


async def test_idempotency_keys_are_the_token_subjects_own(issuing: Gateway) -> None:
    alice, bob = (mint(issuing.settings, subject=sub, scopes=["chat"], ttl_s=600) for sub in ("alice", "bob"))
    first = await issuing.chat(alice, **{"idempotency-key": "same-key"})
    again = await issuing.chat(alice, **{"idempotency-key": "same-key"})
    other = await issuing.chat(bob, **{"idempotency-key": "same-key"})
    assert first.status_code == again.status_code == other.status_code == 200
    assert again.headers.get("idempotent-replayed") == "true"
    assert "idempotent-replayed" not in other.headers  # bob's key is bob's: executed, not replayed
