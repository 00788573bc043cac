"""`python -m loadtests.timed_gateway --times FILE [gateway options]`: the gateway, timing its
own part of every shed answer (429/503), from the request reaching the app to the answer's
last byte handed to the server. On exit the times (seconds, one a line) go to FILE.

A load generator's figures for sheds include its own scheduling: locust's hundred users on
the same two cores as the gateway and engines add milliseconds that are not the gateway's.
"""

import sys
import time
from pathlib import Path

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.__main__ import main

SHED_STATUSES = (429, 503)


class ShedTimer:
    def __init__(self, app: ASGIApp, times: list[float]) -> None:
        self.app = app
        self.times = times

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif status in SHED_STATUSES and not message.get("more_body", False):
                self.times.append(time.perf_counter() - started)
            await send(message)

        await self.app(scope, receive, timed_send)


def run(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] != "--times":
        sys.exit("usage: python -m loadtests.timed_gateway --times FILE [gateway options]")
    path, times = Path(argv[1]), list[float]()
    try:
        main(argv[2:], wrap=lambda app: ShedTimer(app, times))
    finally:
        path.write_text("".join(f"{t:.6f}\n" for t in times))


if __name__ == "__main__":
    run(sys.argv[1:])
