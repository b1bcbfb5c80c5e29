"""The SSRF guard: deliveries may only reach public addresses, unless config opens a range.

A destination URL is user input, so by default relay refuses to connect to loopback,
private, link-local (cloud metadata at 169.254.169.254 and fd00:ec2::254 included),
multicast and other non-global addresses. The check runs on the addresses DNS returned,
inside the HTTP client's resolver, so the connection goes to exactly the address that
was checked (no second lookup for a rebinding DNS server to answer differently).
IP literals skip aiohttp's resolver, so ``refusal_for_url`` checks those before the call.
An IPv6 address that carries an IPv4 address (IPv4-mapped or -compatible, 6to4, Teredo,
NAT64) is refused when the IPv4 address inside would be.

Broker clients that are not aiohttp's connect to ``guarded_address`` (the address judged)
or, where a client must dial a name itself (for its TLS certificate, or a broker a
cluster announces), to ``guarded_name`` (every address of the name judged first). When a
destination is created or changed, ``why_refused_host`` judges each host its type names
(Provider.addresses in relay/delivery/base.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable, Sequence

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Addresses that are not "private" by Python's tables but must never be reached.
ALWAYS_BLOCKED = (
    ipaddress.ip_network("169.254.169.254/32"),  # cloud metadata (also link-local)
    ipaddress.ip_network("fd00:ec2::254/128"),  # AWS metadata over IPv6
    ipaddress.ip_network("100.64.0.0/10"),  # carrier-grade NAT, often internal
)
# IPv6 prefixes whose last 32 bits are the IPv4 address a NAT64 translator forwards to:
# the well-known prefix (RFC 6052) and the local-use range (RFC 8215), read as /96s.
NAT64_PREFIXES = (
    ipaddress.IPv6Network("64:ff9b::/96"),
    ipaddress.IPv6Network("64:ff9b:1::/48"),
)
# Deprecated IPv4-compatible addresses, ::a.b.c.d (RFC 4291).
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")

HINT = (
    "open its range with delivery.allow_private_networks or RELAY_ALLOW_PRIVATE_NETWORKS "
    "to deliver there"
)


class BlockedAddress(OSError):
    """Every address the destination's host resolved to is refused by the SSRF guard."""


def parse_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def _kind(address: Address) -> str | None:
    """Why this address is refused by default, or None for a public address."""
    if any(address in net for net in ALWAYS_BLOCKED if net.version == address.version):
        return "cloud metadata or internal"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_unspecified:
        return "unspecified"
    if address.is_private:
        return "private"
    if address.is_reserved or not address.is_global:
        return "reserved"
    return None


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """The IPv4 addresses an IPv6 address carries, each after a phrase naming its form."""
    if ip.sixtofour is not None:
        return [("6to4 for", ip.sixtofour)]
    if ip.teredo is not None:
        server, client = ip.teredo
        return [("Teredo via server", server), ("Teredo for client", client)]
    last32 = ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)
    if any(ip in net for net in NAT64_PREFIXES):
        return [("NAT64 for", last32)]
    if ip in IPV4_COMPATIBLE and int(ip) > 1:  # :: and ::1 are themselves, not IPv4
        return [("IPv4-compatible for", last32)]
    return []


def _opened(ip: Address, allowed: Sequence[Network]) -> bool:
    return any(ip in net for net in allowed if net.version == ip.version)


def why_refused(ip: Address, allowed: Sequence[Network] = ()) -> str | None:
    """Why ``ip`` is refused (the fact, without the fix), or None when it may be reached."""
    if _opened(ip, allowed):
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            # ::ffff:127.0.0.1 is 127.0.0.1 to the kernel: judge the IPv4 address inside.
            return why_refused(ip.ipv4_mapped, allowed)
        carried = embedded_ipv4(ip)
        for phrase, ipv4 in carried:
            kind = None if _opened(ipv4, allowed) else _kind(ipv4)
            if kind is not None:
                return f"{ip} is {phrase} {ipv4}, which is not a public address ({kind})"
        # An allowed IPv4 range also opens the IPv6 forms that carry its addresses, as it
        # always opened ::ffff:127.0.0.1: whoever opened 127.0.0.0/8 for a local receiver
        # trusts the hosts there however they are spelt; making them list each IPv6 form
        # again would add no safety, only surprise.
        if carried and all(_opened(ipv4, allowed) for _, ipv4 in carried):
            return None
    kind = _kind(ip)
    return None if kind is None else f"{ip} is not a public address ({kind})"


def refusal(address: str | Address, allowed: Sequence[Network] = ()) -> str | None:
    """Why a connection to ``address`` is refused, or None when it may be reached. Pure."""
    try:
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    except ValueError:
        return f"{address!r} is not an IP address"
    why = why_refused(ip, allowed)
    return None if why is None else f"{why}; {HINT}"


def literal_host(url: str) -> Address | None:
    """The URL's host when it is an IP literal; None for a name or no host.

    The short and numeric IPv4 forms the C library also takes (``127.1``, ``2130706433``,
    ``0x7f.1``, ``017700000001``) count as literals: some aiohttp versions pass them to
    the kernel without asking the resolver, so the guard must judge them here."""
    host = URL(url).host
    return None if host is None else literal(host)


def literal(host: str) -> Address | None:
    """``host`` as an IP address when it is an IP literal (in any form ``literal_host``
    takes); None for a name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _NUMERIC_HOST.fullmatch(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


# Dotted parts of digits (decimal, octal) or 0x-hex: what inet_aton reads as an address.
_NUMERIC_HOST = re.compile(r"(?:0[xX][0-9a-fA-F]*|[0-9]+)(?:\.(?:0[xX][0-9a-fA-F]*|[0-9]+)){0,3}")


def why_refused_url(url: str, allowed: Sequence[Network] = ()) -> str | None:
    """Why the guard refuses ``url``'s host when it is an IP literal (the fact, without
    the fix); None for a host name, which the resolver judges at delivery, by what DNS
    answers then."""
    ip = literal_host(url)
    return None if ip is None else why_refused(ip, allowed)


def refusal_for_url(url: str, allowed: Sequence[Network] = ()) -> str | None:
    """The refusal for a URL whose host is an IP literal (those bypass the resolver)."""
    why = why_refused_url(url, allowed)
    return None if why is None else f"{why}; {HINT}"


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that drops refused addresses; none left means BlockedAddress."""

    def __init__(
        self, allowed: Sequence[Network] = (), inner: AbstractResolver | None = None
    ) -> None:
        self.allowed = tuple(allowed)
        self._inner = inner if inner is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        permitted = [r for r in results if refusal(r["host"], self.allowed) is None]
        if results and not permitted:
            raise BlockedAddress(f"{host}: {refusal(results[0]['host'], self.allowed)}")
        return permitted

    async def close(self) -> None:
        await self._inner.close()


# How long the API waits for DNS when it judges a destination's host name.
RESOLVE_SECONDS = 2.0


def refused(field: str, why: str) -> str:
    """The problem of a destination field whose host the guard refuses, with the fix."""
    return f"{field} is refused by the SSRF guard: {why}; {HINT}"


async def _addresses(host: str, port: int | None) -> list[str]:
    """The addresses DNS gives for ``host`` (or the literal), first answer first."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _why(address: str, allowed: Sequence[Network]) -> str | None:
    # A link-local address's zone (fe80::1%eth0) is where to reach it, not what it is.
    return refusal(address.split("%")[0], allowed)


async def why_refused_host(host: str, allowed: Sequence[Network] = ()) -> str | None:
    """Why the guard refuses a destination's host now (the fact, without the fix): an IP
    literal it refuses, or a name whose every address DNS answers is refused. None when
    one may be reached, and when the name does not resolve (yet): DNS may change before
    delivery, and delivery judges it again."""
    ip = literal(host)
    if ip is not None:
        return why_refused(ip, allowed)
    try:
        addresses = await asyncio.wait_for(_addresses(host, None), RESOLVE_SECONDS)
    except (OSError, TimeoutError, UnicodeError):
        return None
    if not addresses or any(_why(a, allowed) is None for a in addresses):
        return None
    first = ipaddress.ip_address(addresses[0].split("%")[0])
    return (
        f"{host} resolves only to refused addresses ({addresses[0]}: {why_refused(first, allowed)})"
    )


async def guarded_address(host: str, port: int, allowed: Sequence[Network] = ()) -> str:
    """The address a broker client should connect to for ``host``: the first one DNS
    gives (or the literal) that the guard permits; BlockedAddress when there is none,
    socket.gaierror when the name does not resolve. Clients that are not aiohttp's (NATS,
    Redis, RabbitMQ, ...) connect to this address rather than the name, so the guard's
    answer is the address connected to (no second lookup to rebind)."""
    addresses = await _addresses(host, port)
    for address in addresses:
        if _why(address, allowed) is None:
            return address
    raise BlockedAddress(f"{host}: {_why(addresses[0], allowed)}")


async def guarded_name(host: str, port: int, allowed: Sequence[Network] = ()) -> str:
    """``host`` itself, once every address DNS gives for it is one the guard permits: for
    a client that must dial the name (its TLS certificate names it; a Kafka broker the
    cluster announces). It may take any of the addresses, so none may be refused; its
    own lookup comes a moment later, which a rebinding DNS server could answer otherwise
    (``guarded_address`` has no such gap: prefer it where a client takes an address)."""
    for address in await _addresses(host, port):
        why = _why(address, allowed)
        if why is not None:
            raise BlockedAddress(f"{host}: {why}")
    return host
