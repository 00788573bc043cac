"""A DNS server for discovery tests: real DNS over UDP on loopback (dnslib), answering A and
AAAA queries from records the test sets and changes while it runs, as a cluster's DNS does for
a headless Service whose pods come and go. `failing` makes it answer SERVFAIL (a resolver
outage, not a name without records)."""

import threading
from typing import Any

from dnslib import AAAA, QTYPE, RCODE, RR, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer

from harness.servers import free_port

__all__ = ["DnsServer"]


class DnsServer(BaseResolver):  # type: ignore[misc]
    def __init__(self) -> None:
        self.port = free_port()
        self.records: dict[str, list[str]] = {}  # name -> addresses (v4 and v6)
        self.failing = False
        self.queries = 0
        self._lock = threading.Lock()
        quiet = DNSLogger(logf=lambda *_: None)
        self._server = DNSServer(self, port=self.port, address="127.0.0.1", logger=quiet)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def set(self, name: str, addresses: list[str]) -> None:
        with self._lock:
            self.records[name.rstrip(".")] = list(addresses)

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        name, kind = str(request.q.qname).rstrip("."), QTYPE[request.q.qtype]
        with self._lock:
            self.queries += 1
            if self.failing:
                reply.header.rcode = RCODE.SERVFAIL
                return reply
            if name not in self.records:
                reply.header.rcode = RCODE.NXDOMAIN
                return reply
            addresses = list(self.records[name])
        for address in addresses:
            if kind == "A" and ":" not in address:
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(address), ttl=1))
            elif kind == "AAAA" and ":" in address:
                reply.add_answer(RR(request.q.qname, QTYPE.AAAA, rdata=AAAA(address), ttl=1))
        return reply

    def __enter__(self) -> "DnsServer":
        self._server.start_thread()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.stop()
        self._server.server.server_close()  # (stop() leaves the socket open)
