"""`python -m sync`: one region's sync sidecar."""

import argparse
from typing import Any

import uvicorn

from app.logs import configure_logging
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
    given: dict[str, Any] = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    settings = SyncSettings(**given)
    configure_logging(settings.log_level, "text")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level)


if __name__ == "__main__":
    main()
