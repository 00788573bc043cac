"""Behind an ingress, the login page's throttle counts the client its proxy names
(`forwarded_allow_ips`, passed to the server): each client its own bucket, and no client can
name itself by sending X-Forwarded-For (the rightmost address no trusted proxy gave counts)."""

import json
import re
from pathlib import Path

import httpx

from app.auth.secrets import hash_secret
from harness.servers import ServerProcess, free_port


def _attempts(gateway: ServerProcess, forwarded_for: list[str]) -> list[int]:
    """Wrong passwords at the login page, one per X-Forwarded-For value: their statuses."""
    callback = gateway.url + "/console/callback"
    form = {"response_type": "code", "client_id": "switchyard-console", "redirect_uri": callback, "state": "s",
            "code_challenge": "A" * 43, "code_challenge_method": "S256"}  # fmt: skip
    form |= {"username": "ada", "password": "guess"}
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        return [client.post("/oauth/authorize", data=form, headers={"x-forwarded-for": f}).status_code
                for f in forwarded_for]  # fmt: skip


def test_the_throttle_counts_the_client_the_proxy_names(tmp_path: Path, log_dir: Path) -> None:
    port = free_port()
    users = [{"username": "ada", "password_hash": hash_secret("right"), "scopes": ["chat"]}]
    env = {
        "SWITCHYARD_DATA_DIR": str(tmp_path),
        "SWITCHYARD_AUTH_MODE": "builtin",
        "SWITCHYARD_AUTH_USERS": json.dumps(users),
        "SWITCHYARD_POOLS": json.dumps([{"name": "p", "replicas": [f"http://127.0.0.1:{free_port()}"]}]),
        "SWITCHYARD_FORWARDED_ALLOW_IPS": '["127.0.0.0/8"]',  # the test's client plays the ingress
    }
    gateway = ServerProcess("app", ["--port", str(port)], port=port, log_dir=log_dir, env=env).wait_ready()
    try:
        # twelve clients, one guess each: nobody is slowed down
        assert _attempts(gateway, [f"198.51.100.{n}" for n in range(12)]) == [401] * 12
        # one client, twelve guesses: slowed after its burst of ten, whatever it puts first in the header
        spoofed = [f"203.0.113.{n}, 192.0.2.7" for n in range(12)]
        assert _attempts(gateway, spoofed) == [401] * 10 + [429] * 2
    finally:
        gateway.stop()
    assert not re.search(r"Traceback", gateway.output())
