"""Engines found in DNS: a name's A and AAAA records (a Kubernetes headless Service's pods),
for the gateway's pools and the sync sidecar's engines alike.

`addresses` tells a name with no records (none: `[]`) from a resolver that cannot answer
(ResolveFailed), so a caller can keep what it has through a DNS outage. A name ending in `.`
is absolute: the system resolver's search domains (Kubernetes' `ndots:5`) are not tried first.
"""

import asyncio
import ipaddress
from typing import Annotated

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.resolver
from pydantic import AfterValidator, Field

__all__ = [
    "DnsName",
    "Nameservers",
    "ResolveFailed",
    "addresses",
    "check_name",
    "nameserver_address",
    "resolver",
    "url_of",
]


class ResolveFailed(RuntimeError):
    """The resolver could not say what the name's records are (not: that it has none)."""


def nameserver_address(server: str) -> tuple[str, int]:
    """`address`, `address:port` or `[v6 address]:port` as (address, port); ValueError otherwise."""
    host, port = server, "53"
    if server.startswith("["):
        host, _, rest = server[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{server!r} is not an IP address with an optional :port")
            port = rest[1:]
    elif server.count(":") == 1:
        host, port = server.split(":")
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f"{server!r} is not an IP address (with an optional :port)") from None
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"{server!r} has no valid port")
    return address, int(port)


def resolver(nameservers: list[str], lifetime_s: float) -> dns.asyncresolver.Resolver:
    """The system's resolver (resolv.conf, its search domains too: a Service's short name
    works), or one that asks `nameservers`; an answer waited for at most `lifetime_s`."""
    chosen = dns.asyncresolver.Resolver(configure=not nameservers)
    if nameservers:
        chosen.nameservers = [
            dns.nameserver.Do53Nameserver(address, port)
            for address, port in (nameserver_address(server) for server in nameservers)
        ]
    chosen.lifetime = lifetime_s
    return chosen


async def addresses(chosen: dns.asyncresolver.Resolver, name: str, *, search: bool) -> list[str]:
    """`name`'s addresses, each once, in order: its A records, or its AAAA records when it has
    no A record (a dual-stack Service has both for each pod: one family, so each pod counts
    once). With the resolver's search domains when `search`. ResolveFailed when the resolver
    cannot tell (a timeout, SERVFAIL, no server answering)."""
    v4, v6 = await asyncio.gather(_records(chosen, name, "A", search), _records(chosen, name, "AAAA", search))
    return list(dict.fromkeys(v4 or v6))


async def _records(chosen: dns.asyncresolver.Resolver, name: str, kind: str, search: bool) -> list[str]:
    try:
        answer = await chosen.resolve(name, kind, search=search)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []  # authoritative: none of this kind
    except dns.exception.DNSException as error:
        raise ResolveFailed(f"{type(error).__name__}: {error}") from error
    return [record.to_text() for record in answer]


def check_name(name: str) -> str:
    """`name` when it is a valid DNS name (labels of 1 to 63 characters, 253 in all); ValueError otherwise."""
    try:
        dns.name.from_text(name)
    except dns.exception.DNSException as error:
        raise ValueError(f"{name!r} is not a valid DNS name: {error}") from None
    if not name.strip(".") or ".." in name:
        raise ValueError(f"{name!r} is not a valid DNS name")
    return name


def _checked_nameserver(server: str) -> str:
    nameserver_address(server)
    return server


# Settings' types, for the gateway's pools and the sidecar alike: a DNS name (letters, digits,
# `_.-`; labels of 1 to 63 characters; a final `.` allowed), and the DNS servers to ask.
DnsName = Annotated[
    str,
    Field(min_length=1, max_length=254, pattern=r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_.])?$"),
    AfterValidator(check_name),
]
Nameservers = Annotated[list[Annotated[str, AfterValidator(_checked_nameserver)]], Field(max_length=8)]


def url_of(scheme: str, address: str, port: int) -> str:
    host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    return f"{scheme}://{host}:{port}"
