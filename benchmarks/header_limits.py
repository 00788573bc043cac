"""Benchmark: what the HTTP limits cost, and what each HTTP parser lets through, in one run.

    python -m benchmarks.header_limits [--seconds 8] [--rounds 3]

Three gateways on CPU 0 (benchmarks/parser_gateway.py): `httptools` (uvicorn's protocol as it
comes, no limits), `limited` (what `python -m app` runs: httptools with app/api/http_limits.py)
and `h11` (uvicorn's h11 protocol with its buffer capped at max_header_bytes). wrk on CPU 1
beside the instant engine drives one at a time (c=32, non-streaming chat), with wrk's own
four headers and with 16 more such as the OpenAI SDKs send; rounds alternate the gateways,
so the machine's drift hits them alike. Beside req/s, the gateway's CPU time a request
(from /proc): on a shared machine it moves far less than req/s. Then each gateway gets the hostile cases: three
16 MB headers (the answer, and how much its RSS grew), 5,000 header fields, and headers sent
one byte every 0.5 s (when the connection was cut). Last, the parse alone, in this process:
CPU time per request through each protocol (a fake transport, an app that answers at once),
best of several rounds, and what it adds as a share of a gateway request (1 / its req/s
above: it runs on one core).
Needs `wrk` (Debian: `apt-get install wrk`) and `taskset`.
"""

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
import uvloop
from starlette.types import Receive, Scope, Send
from uvicorn.server import ServerState

from app.api.http_limits import HttpLimits, limited_protocol
from app.settings import GatewaySettings
from benchmarks.gateway_overhead import BODY, run_wrk
from harness.servers import ServerProcess, free_port

PARSERS = ("httptools", "limited", "h11")
SDK_HEADERS = {
    "Accept": "application/json",
    "User-Agent": "OpenAI/Python 1.99.0",
    "Authorization": "Bearer sk-bench-0123456789abcdef0123456789abcdef",
    "X-Stainless-Lang": "python",
    "X-Stainless-Package-Version": "1.99.0",
    "X-Stainless-OS": "Linux",
    "X-Stainless-Arch": "x64",
    "X-Stainless-Runtime": "CPython",
    "X-Stainless-Runtime-Version": "3.11.9",
    "X-Stainless-Async": "false",
    "X-Stainless-Retry-Count": "0",
    "X-Stainless-Read-Timeout": "600",
    "X-Stainless-Timeout": "600",
    "Accept-Encoding": "gzip, deflate",
    "OpenAI-Organization": "org-bench",
    "OpenAI-Project": "proj-bench",
}
SLOW_CUTOFF_S = 30.0  # how long the slow-header client goes on before giving up itself


class FakeTransport(asyncio.Transport):
    """Takes what a protocol writes and throws it away: the parse timed alone, no socket."""

    def __init__(self) -> None:
        super().__init__()
        self._closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _answer_at_once(scope: Scope, receive: Receive, send: Send) -> None:
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"{}"})


def _request_bytes(headers: dict[str, str]) -> bytes:
    body = json.dumps(BODY).encode()
    fields = {"Host": "127.0.0.1:8000", "Content-Type": "application/json", "Content-Length": str(len(body))}
    head = "".join(f"{n}: {v}\r\n" for n, v in (fields | headers).items())
    return f"POST /v1/chat/completions HTTP/1.1\r\n{head}\r\n".encode() + body


async def _parse_cost(http: dict[str, Any], request: bytes, count: int) -> float:
    """Seconds per request, kept-alive on one connection, through uvicorn's protocol and an
    app that answers at once: the protocol's own cost and an ASGI task's."""
    config = uvicorn.Config(_answer_at_once, lifespan="off", log_level="warning", **http)
    config.load()
    state = ServerState()
    protocol = config.http_protocol_class(config=config, server_state=state, app_state={})  # type: ignore[call-arg]
    protocol.connection_made(FakeTransport())
    started = time.process_time()  # CPU time: what other processes on the machine do is not counted
    for _ in range(count):
        protocol.data_received(request)
        await asyncio.gather(*state.tasks)
    elapsed = (time.process_time() - started) / count
    protocol.connection_lost(None)
    return elapsed


def parse_costs(
    header_sets: dict[str, dict[str, str]], rounds: int, count: int = 20_000
) -> dict[tuple[str, str], float]:
    """Best of `rounds` of each parser's cost per request, for each set of headers, in µs."""
    settings = GatewaySettings()
    options: dict[str, dict[str, Any]] = {
        "httptools": {"http": "httptools"},
        "limited": {"http": limited_protocol(HttpLimits.from_settings(settings))},
        "h11": {"http": "h11", "h11_max_incomplete_event_size": settings.max_header_bytes},
    }
    best: dict[tuple[str, str], float] = {}
    loop = uvloop.new_event_loop()  # the gateway's loop (uvicorn picks uvloop when installed)
    try:
        for _ in range(rounds):
            for name, headers in header_sets.items():
                request = _request_bytes(headers)
                for parser in PARSERS:
                    cost = loop.run_until_complete(_parse_cost(options[parser], request, count)) * 1e6
                    best[(parser, name)] = min(cost, best.get((parser, name), cost))
    finally:
        loop.close()
    return best


def _gateway(parser: str, engine_url: str, log_dir: Path) -> ServerProcess:
    port = free_port()
    env = {
        "SWITCHYARD_POOLS": json.dumps([{"name": "bench", "replicas": [engine_url]}]),
        "SWITCHYARD_AUTH_MODE": "disabled",  # the Authorization header above is only bytes
    }
    args = ["0", "benchmarks.parser_gateway", parser, "--port", str(port), "--log-level", "warning"]
    return ServerProcess("benchmarks.pinned", args, port=port, log_dir=log_dir, env=env, ready_path="/ready")


def _rss_kib(pid: int) -> int:
    # The pinned launcher runs the gateway in its own process (runpy), so the pid is the gateway's.
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1])


def _connect(url: str, timeout: float) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def _status(sock: socket.socket) -> str:
    """The status code answered on `sock`, or how the connection ended without one."""
    try:
        first = sock.recv(64)
    except TimeoutError:
        return "no answer"
    except ConnectionResetError:
        return "reset"
    return first.split(b" ")[1].decode() if first.startswith(b"HTTP/") else "closed"


def _send_then_status(url: str, request: bytes) -> str:
    with _connect(url, 30) as sock:

        def send() -> None:
            with contextlib.suppress(OSError):  # refused: the gateway closed its side
                sock.sendall(request)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        status = _status(sock)
        sender.join(30)
        return status


def _slow_headers(url: str) -> str:
    """Headers one byte every 0.5 s: when and how the gateway ends the connection."""
    request = b"GET /health HTTP/1.1\r\nHost: bench\r\nX-Slow: " + b"a" * 1000 + b"\r\n\r\n"
    with _connect(url, SLOW_CUTOFF_S) as sock:
        sock.setblocking(False)
        started = time.monotonic()
        for byte in request:
            if time.monotonic() - started > SLOW_CUTOFF_S:
                return f"still open after {SLOW_CUTOFF_S:.0f} s"
            try:
                sock.send(bytes([byte]))
                answer = sock.recv(64)
            except BlockingIOError:
                time.sleep(0.5)
                continue
            except OSError:
                return f"reset after {time.monotonic() - started:.1f} s"
            what = answer.split(b" ")[1].decode() if answer.startswith(b"HTTP/") else "closed"
            return f"{what} after {time.monotonic() - started:.1f} s"
        return "sent in full"


def hostile(parser: str, gateway: ServerProcess) -> dict[str, str]:
    big = b"GET /health HTTP/1.1\r\nHost: bench\r\nX-Big: " + b"a" * (16 << 20) + b"\r\n\r\n"
    before = _rss_kib(gateway.process.pid)
    statuses = [_send_then_status(gateway.url, big) for _ in range(3)]
    growth = (_rss_kib(gateway.process.pid) - before) / 1024
    fields = "".join(f"x-f{i}: v\r\n" for i in range(5000)).encode()
    many = b"GET /health HTTP/1.1\r\nHost: bench\r\n" + fields + b"\r\n"
    return {
        "16 MB header": "/".join(statuses),
        "RSS growth, 3 of them": f"{growth:+.0f} MiB",
        "5,000 fields": _send_then_status(gateway.url, many),
        "1 byte / 0.5 s": _slow_headers(gateway.url),
    }


def _cpu_s(pid: int) -> float:
    """The process's CPU time so far (user + system): what it spent, whoever else ran."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load(
    gateways: dict[str, ServerProcess], header_sets: dict[str, dict[str, str]], seconds: int, rounds: int
) -> tuple[dict[tuple[str, str], list[float]], dict[tuple[str, str], list[float]]]:
    """wrk on each gateway and set of headers, round after round: req/s and the gateway's CPU µs a request."""
    rates: dict[tuple[str, str], list[float]] = {(p, h): [] for p in gateways for h in header_sets}
    cpu_us: dict[tuple[str, str], list[float]] = {(p, h): [] for p in gateways for h in header_sets}
    for round_ in range(rounds):
        for name, headers in header_sets.items():
            for parser, gateway in gateways.items():
                before = _cpu_s(gateway.process.pid)
                rate, _, _, errors = run_wrk(gateway.url, BODY, 32, seconds, headers=headers)
                if errors:
                    raise RuntimeError(f"{parser}: {errors} answers were not 2xx")
                rates[(parser, name)].append(rate)
                cpu_us[(parser, name)].append(1e6 * (_cpu_s(gateway.process.pid) - before) / (rate * seconds))
        print(f"round {round_ + 1}: " + ", ".join(f"{p}/{h} {r[-1]:.0f}" for (p, h), r in rates.items()), flush=True)
    return rates, cpu_us


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=8, help="wrk run per gateway, header set and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="header-limits-"))
    engine_port = free_port()
    engine = ServerProcess(
        "benchmarks.pinned", ["1", "engines.instant", "--port", str(engine_port)], port=engine_port, log_dir=log_dir
    ).wait_ready()
    gateways = {p: _gateway(p, engine.url, log_dir) for p in PARSERS}
    header_sets = {"wrk's 4 headers": {}, "+16 SDK headers": SDK_HEADERS}
    try:
        for gateway in gateways.values():
            gateway.wait_ready()
        time.sleep(2.5)  # a probe round: the replica healthy for routing
        rates, cpu_us = _load(gateways, header_sets, args.seconds, args.rounds)
        findings = {p: hostile(p, g) for p, g in gateways.items()}
    finally:
        for gateway in gateways.values():
            gateway.stop()
        engine.stop()
    costs = parse_costs(header_sets, rounds=args.rounds * 3)

    print("\nMedians over the rounds (each round's figure in brackets); ratios against httptools.\n")
    print("| parser | headers | req/s | of httptools | gateway CPU µs a request | of httptools |")
    print("|---|---|---|---|---|---|")
    for h in header_sets:
        base_rate, base_cpu = statistics.median(rates[("httptools", h)]), statistics.median(cpu_us[("httptools", h)])
        for p in PARSERS:
            rate, cpu = statistics.median(rates[(p, h)]), statistics.median(cpu_us[(p, h)])
            print(
                f"| {p} | {h} | {rate:,.0f} ({', '.join(f'{v:,.0f}' for v in rates[(p, h)])}) | {rate / base_rate:.3f} "
                f"| {cpu:.0f} ({', '.join(f'{v:.0f}' for v in cpu_us[(p, h)])}) | {cpu / base_cpu:.3f} |"
            )
    print("\nThe parse alone (best of rounds, CPU µs a request), and what it adds to a gateway request's CPU:\n")
    print("| parser | headers | µs a request | added µs | of a gateway request |")
    print("|---|---|---|---|---|")
    for h in header_sets:
        base_cpu = statistics.median(cpu_us[("httptools", h)])
        for p in PARSERS:
            added = costs[(p, h)] - costs[("httptools", h)]
            print(f"| {p} | {h} | {costs[(p, h)]:.1f} | {added:+.1f} | {added / base_cpu:+.1%} |")
    columns = list(next(iter(findings.values())))
    print("\n| parser | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for p, found in findings.items():
        print(f"| {p} | " + " | ".join(found[c] for c in columns) + " |")


if __name__ == "__main__":
    main()
