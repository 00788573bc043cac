"""`python -m app`: run the gateway. With no pools configured it starts its own local engine."""

import sys
from collections.abc import Callable

from starlette.types import ASGIApp

from app.auth.keys import SigningKeys
from app.observability.logs import configure_logging
from app.server import parse_args, serve, serve_worker
from app.workers import Supervisor, worker_exit


def main(argv: list[str] | None = None, wrap: Callable[[ASGIApp], ASGIApp] | None = None) -> None:
    """Serve until drained. `wrap` puts ASGI middleware around the whole app (benchmarks time it)."""
    argv = sys.argv[1:] if argv is None else argv
    settings = parse_args(argv)
    configure_logging(settings.log_level, settings.log_format)
    if settings.workers == 1:
        worker_exit(serve(settings, wrap))
    if settings.auth_mode == "builtin":  # the signing key, made once before the workers read it
        SigningKeys(settings.data_dir / "auth", token_ttl_s=settings.auth_token_ttl_s)
    supervisor = Supervisor(serve_worker, argv, settings.workers, settings.host, settings.port, wrap)
    sys.exit(supervisor.run())


if __name__ == "__main__":
    main()
