"""The SSRF guard's address rules and its resolver, without a network."""

from __future__ import annotations

import ipaddress
import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from relay import ssrf


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.5", "private"),
        ("172.16.3.4", "private"),
        ("192.168.1.1", "private"),
        ("fd12:3456::1", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("169.254.10.10", "link-local"),
        ("fe80::1", "link-local"),
        ("100.64.0.1", "cloud metadata or internal"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.251", "multicast"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:10.1.1.1", "private"),
    ],
)
def test_non_public_addresses_are_refused(address: str, kind: str) -> None:
    reason = ssrf.refusal(address)
    assert reason is not None
    assert kind in reason
    assert "allow_private_networks" in reason


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert ssrf.refusal(address) is None


def test_allowlist_opens_exactly_its_ranges() -> None:
    allowed = ssrf.parse_networks(["127.0.0.0/8", "10.1.0.0/16"])
    assert ssrf.refusal("127.0.0.1", allowed) is None
    assert ssrf.refusal("::ffff:127.0.0.1", allowed) is None
    assert ssrf.refusal("10.1.200.3", allowed) is None
    assert ssrf.refusal("10.2.0.1", allowed) is not None
    assert ssrf.refusal("::1", allowed) is not None
    assert ssrf.refusal("169.254.169.254", allowed) is not None


@pytest.mark.parametrize(
    ("address", "form", "kind"),
    [
        ("2002:7f00:1::", "6to4 for 127.0.0.1", "loopback"),
        ("2002:a00:1::1", "6to4 for 10.0.0.1", "private"),
        ("2002:a9fe:a9fe::", "6to4 for 169.254.169.254", "cloud metadata"),
        ("::127.0.0.1", "IPv4-compatible for 127.0.0.1", "loopback"),
        ("::a9fe:a9fe", "IPv4-compatible for 169.254.169.254", "cloud metadata"),
        ("64:ff9b::127.0.0.1", "NAT64 for 127.0.0.1", "loopback"),
        ("64:ff9b::192.168.0.1", "NAT64 for 192.168.0.1", "private"),
        ("64:ff9b:1:2::10.1.2.3", "NAT64 for 10.1.2.3", "private"),
        # Teredo: the server is the 2nd and 3rd groups, the client the last 32 bits inverted.
        ("2001:0:7f00:1::", "Teredo via server 127.0.0.1", "loopback"),
        ("2001:0:5db8:d70e::f5ff:fffe", "Teredo for client 10.0.0.1", "private"),
    ],
)
def test_ipv4_inside_ipv6_is_judged_and_named(address: str, form: str, kind: str) -> None:
    reason = ssrf.refusal(address)
    assert reason is not None
    assert f"{ipaddress.ip_address(address)} is {form}, " in reason
    assert kind in reason
    assert "allow_private_networks" in reason


def test_an_allowed_range_opens_the_ipv4_it_holds_in_every_ipv6_form() -> None:
    allowed = ssrf.parse_networks(["127.0.0.0/8"])
    for address in ("2002:7f00:1::", "::127.0.0.1", "64:ff9b::127.0.0.1", "64:ff9b:1::7f00:1"):
        assert ssrf.refusal(address, allowed) is None, address
    # The loopback client is opened, the metadata server is not.
    assert ssrf.refusal("2001:0:a9fe:a9fe::80ff:fffe", allowed) is not None
    assert ssrf.refusal("2002:a00:1::", allowed) is not None


def test_an_allowed_ipv6_range_opens_its_addresses_whatever_they_carry() -> None:
    allowed = ssrf.parse_networks(["2002:7f00::/24", "::ffff:0:0/96"])
    assert ssrf.refusal("2002:7f00:1::", allowed) is None
    assert ssrf.refusal("::ffff:127.0.0.1", allowed) is None
    assert ssrf.refusal("2002:a00:1::", allowed) is not None


def test_ip_literal_urls_are_judged_names_are_left_to_the_resolver() -> None:
    assert ssrf.refusal_for_url("http://127.0.0.1:8080/hook") is not None
    assert ssrf.refusal_for_url("http://[::1]/hook") is not None
    assert ssrf.refusal_for_url("http://169.254.169.254/latest/meta-data") is not None
    assert ssrf.refusal_for_url("http://[2002:7f00:1::]:8080/hook") is not None
    assert ssrf.refusal_for_url("https://93.184.215.14/") is None
    assert ssrf.refusal_for_url("https://example.com/hook") is None


class FixedResolver(AbstractResolver):
    def __init__(self, *hosts: str) -> None:
        self.hosts = hosts

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host=h, port=port, family=family, proto=0, flags=0)
            for h in self.hosts
        ]

    async def close(self) -> None:
        pass


async def test_resolver_drops_refused_addresses_and_keeps_public_ones() -> None:
    resolver = ssrf.GuardedResolver(inner=FixedResolver("10.0.0.1", "93.184.215.14"))
    [kept] = await resolver.resolve("mixed.example", 443)
    assert kept["host"] == "93.184.215.14"


async def test_resolver_refuses_a_name_that_only_points_inside() -> None:
    resolver = ssrf.GuardedResolver(inner=FixedResolver("169.254.169.254"))
    with pytest.raises(ssrf.BlockedAddress, match=r"169\.254\.169\.254"):
        await resolver.resolve("metadata.example", 80)
    allowed = ssrf.GuardedResolver(
        ssrf.parse_networks(["169.254.169.254/32"]), inner=FixedResolver("169.254.169.254")
    )
    assert len(await allowed.resolve("metadata.example", 80)) == 1


@pytest.mark.parametrize("host", ["127.1", "2130706433", "0x7f.1", "017700000001", "10.1"])
def test_short_and_numeric_ipv4_forms_are_literals_too(host: str) -> None:
    # The C library reads these as addresses; some aiohttp versions connect to them
    # without asking the resolver, so they are judged as the address they denote.
    assert ssrf.refusal_for_url(f"http://{host}:8080/hook") is not None
    assert ssrf.refusal_for_url("http://134744072/") is None  # 8.8.8.8
    assert ssrf.literal_host("http://1.2.3.4.5/") is None  # a name, for DNS to answer


async def test_a_broker_client_connects_to_the_address_the_guard_judged() -> None:
    """NATS and Redis connect to the address guarded_address returns, not the name."""
    loopback = ssrf.parse_networks(["127.0.0.0/8"])
    assert await ssrf.guarded_address("127.0.0.1", 4222, loopback) == "127.0.0.1"
    assert await ssrf.guarded_address("localhost", 6379, loopback) == "127.0.0.1"
    with pytest.raises(ssrf.BlockedAddress, match=r"127\.0\.0\.1 is not a public address"):
        await ssrf.guarded_address("127.0.0.1", 4222)
    with pytest.raises(ssrf.BlockedAddress, match="cloud metadata"):
        await ssrf.guarded_address("169.254.169.254", 80, loopback)
