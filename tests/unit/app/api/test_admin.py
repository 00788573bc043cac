"""The admin API (app/api/admin.py): with authentication disabled (a loopback-only gateway), it
still answers only clients on this host. With authentication on, it takes tokens with scope
`admin` (tests/unit/app/api/test_deps.py)."""

import httpx
import pytest

from app.factory import create_app
from app.settings import GatewaySettings


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/pools"),
        ("POST", "/admin/pools/eu/replicas"),
        ("DELETE", "/admin/pools/eu/replicas/eu-0"),
        ("POST", "/admin/pools/eu/replicas/eu-0/drain"),
    ],
)
async def test_other_hosts_are_refused(method: str, path: str) -> None:
    settings = {"pools": [{"name": "eu", "replicas": ["http://127.0.0.1:9"]}], "auth_mode": "disabled"}
    app = create_app(GatewaySettings.model_validate(settings))
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        response = await client.request(method, path)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
