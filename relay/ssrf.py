"""The SSRF guard: deliveries may only reach public addresses, unless config opens a range.

A destination URL is user input, so by default relay refuses to connect to loopback,
private, link-local (cloud metadata at 169.254.169.254 and fd00:ec2::254 included),
multicast and other non-global addresses. The check runs on the addresses DNS returned,
inside the HTTP client's resolver, so the connection goes to exactly the address that
was checked (no second lookup for a rebinding DNS server to answer differently).
IP literals skip aiohttp's resolver, so ``refusal_for_url`` checks those before the call.
"""

from __future__ import annotations

import ipaddress
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


def refusal(address: str | Address, allowed: Sequence[Network] = ()) -> str | None:
    """Why a connection to ``address`` is refused, or None when it may be reached. Pure."""
    try:
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    except ValueError:
        return f"{address!r} is not an IP address"
    # ::ffff:127.0.0.1 is 127.0.0.1 to the kernel: judge the IPv4 address inside.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in net for net in allowed if net.version == ip.version):
        return None
    kind = _kind(ip)
    if kind is None:
        return None
    return (
        f"{ip} is not a public address ({kind}); open its range with "
        "delivery.allow_private_networks or RELAY_ALLOW_PRIVATE_NETWORKS to deliver there"
    )


def refusal_for_url(url: str, allowed: Sequence[Network] = ()) -> str | None:
    """The refusal for a URL whose host is an IP literal (those bypass the resolver)."""
    host = URL(url).host
    if host is None:
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None  # a name: the resolver judges what it resolves to
    return refusal(ip, allowed)


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
