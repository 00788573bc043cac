"""Running the gateway's server: the command line, one server that drains on SIGTERM, and
the entry point of each worker when there are several (app/workers.py spawns them by name,
so they live here rather than in `__main__`)."""

import argparse
import asyncio
import gc
import os
import socket
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from pydantic import ValidationError
from starlette.types import ASGIApp

from app.api.http_limits import HttpLimits, limited_protocol
from app.factory import create_app
from app.observability.logs import configure_logging
from app.reliability.drain import Drain
from app.settings import GatewaySettings, load_settings
from app.workers import worker_exit

__all__ = ["parse_args", "serve", "serve_worker"]


def parse_args(argv: list[str] | None = None) -> GatewaySettings:
    parser = argparse.ArgumentParser(prog="python -m app", description="Run the gateway.")
    parser.add_argument("--config", type=Path, help="YAML settings file (also SWITCHYARD_CONFIG)")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--region")
    parser.add_argument("--log-level")
    args = vars(parser.parse_args(argv))
    config = args.pop("config")
    overrides: dict[str, Any] = {k: v for k, v in args.items() if v is not None}
    try:
        return load_settings(overrides, config)
    except (ValidationError, ValueError) as exc:
        parser.exit(2, f"invalid settings: {exc}\n")


class _DrainingServer(uvicorn.Server):
    """The first SIGTERM or SIGINT drains (app/reliability/drain.py) and exits when done, with status 0;
    a second one is uvicorn's own: exit now."""

    def __init__(self, config: uvicorn.Config, drain: Drain) -> None:
        super().__init__(config)
        self._drain = drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain.draining or not self.started:
            super().handle_exit(sig, frame)
            return
        asyncio.get_running_loop().call_soon_threadsafe(self._drain.begin)

    async def on_tick(self, counter: int) -> bool:
        if self._drain.drained:
            self.should_exit = True  # as a signal would: a second one during shutdown exits at once
        return await super().on_tick(counter)


def settle_heap() -> None:
    """What exists before serving lives as long as the process: keep it out of the cycle
    collector's scans, and let the young generation grow before a collection. The request path
    allocates many short-lived objects, and each full scan of the start-up heap (FastAPI,
    pydantic, the router) showed as a quarter of the gateway's time (docs/benchmarks.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)


def serve_worker(
    argv: list[str], sockets: list[socket.socket], wrap: Callable[[ASGIApp], ASGIApp] | None = None
) -> None:
    """One of several workers (app/workers.py). Its own process group: a terminal's Ctrl-C
    reaches the parent alone, which passes it on once."""
    os.setpgid(0, 0)
    settings = parse_args(argv)
    configure_logging(settings.log_level, settings.log_format)
    worker_exit(serve(settings, wrap, sockets))


def serve(
    settings: GatewaySettings,
    wrap: Callable[[ASGIApp], ASGIApp] | None = None,
    sockets: list[socket.socket] | None = None,
    http: dict[str, Any] | None = None,
) -> bool:
    """Run one server until drained; whether it started. `http`: uvicorn's HTTP options in
    place of httptools with the limits of app/api/http_limits.py (benchmarks compare parsers)."""
    app = create_app(settings)
    config = uvicorn.Config(
        wrap(app) if wrap else app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        timeout_graceful_shutdown=5,  # after the drain, only idle connections remain
        **(http if http is not None else {"http": limited_protocol(HttpLimits.from_settings(settings))}),
    )
    server = _DrainingServer(config, app.state.drain)
    settle_heap()
    server.run(sockets)
    return server.started
