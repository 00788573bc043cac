"""`python -m benchmarks.parser_gateway PARSER [gateway options]`: one gateway worker on another
HTTP parser than its own, for benchmarks and for showing what the limits prevent.

PARSER is `limited` (what `python -m app` runs: httptools with app/api/http_limits.py),
`httptools` (uvicorn's httptools protocol as it comes: no header limits, no timeouts) or
`h11` (uvicorn's h11 protocol, its buffer capped at the gateway's max_header_bytes: h11's
own limit; no field count, no timeouts).
"""

import sys
from typing import Any

from app.observability.logs import configure_logging
from app.server import parse_args, serve
from app.settings import GatewaySettings
from app.workers import worker_exit

PARSERS = ("limited", "httptools", "h11")


def http_options(parser: str, settings: GatewaySettings) -> dict[str, Any] | None:
    if parser == "httptools":
        return {"http": "httptools"}
    if parser == "h11":
        return {"http": "h11", "h11_max_incomplete_event_size": settings.max_header_bytes}
    return None  # the gateway's own


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in PARSERS:
        sys.exit(f"usage: python -m benchmarks.parser_gateway {{{','.join(PARSERS)}}} [gateway options]")
    settings = parse_args(argv[1:])
    if settings.workers != 1:
        sys.exit("one worker only")
    configure_logging(settings.log_level, settings.log_format)
    worker_exit(serve(settings, http=http_options(argv[0], settings)))


if __name__ == "__main__":
    main(sys.argv[1:])
