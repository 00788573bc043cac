"""`python -m sync`: one region's sync sidecar."""

import argparse
import logging
from typing import Any

import uvicorn
from pydantic import ValidationError

from sync.app import create_app
from sync.settings import SyncSettings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sync", description=__doc__)
    parser.add_argument("--region")
    parser.add_argument("--role", choices=["region", "edge"])
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--peer", action="append", dest="peers", help="another region's sidecar URL (repeat)")
    parser.add_argument("--engine", action="append", dest="engines", help="a local engine URL (repeat)")
    parser.add_argument("--auth-mode", choices=["jwt", "disabled"], help="writes need a token (default), or not")
    parser.add_argument("--auth-issuer", help="the exact `iss` of operators' tokens (the gateway's issuer)")
    parser.add_argument(
        "--auth-jwks", help="the issuer's JWKS, a URL or a file (default: <issuer>/.well-known/jwks.json)"
    )
    # The peer key and the engines' API key come from the environment only: flags show in `ps`.
    given: dict[str, Any] = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    try:
        settings = SyncSettings(**given)
    except ValidationError as exc:  # an unsafe or malformed setting: say which, and do not start
        reasons = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        parser.exit(2, f"python -m sync: refusing to start: {reasons}\n")
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level)


if __name__ == "__main__":
    main()
