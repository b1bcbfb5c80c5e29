"""A destination whose URL the SSRF guard refuses is refused when it is created (API and
config file), not only when a delivery is tried: an IP literal always, and through the
API a host name whose every address is refused now. A name that does not resolve is
accepted: DNS may answer differently at delivery, where the guard still runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from relay.config import ConfigError, load_settings
from tests.support.relay import admin_headers, make_settings

DESTINATIONS = "/api/v1/tenants/acme/destinations"


async def call(http: Any, server: Any, method: str, path: str, body: Any = None) -> Any:
    async with http.request(
        method, server.make_url(path), json=body, headers=admin_headers()
    ) as resp:
        return resp.status, await resp.json()


async def relay_with(start_relay: Any, http: Any, database_url: str, allowed: list[str]) -> Any:
    settings = make_settings(database_url, delivery={"allow_private_networks": allowed})
    server = await start_relay(settings, dispatcher=False)
    assert (await call(http, server, "PUT", "/api/v1/tenants/acme"))[0] == 201
    return server


def webhook(url: str) -> dict[str, Any]:
    return {"type": "webhook", "topics": "*", "config": {"url": url}}


def assert_names_field_and_fix(answer: dict[str, Any], address: str) -> None:
    [problem] = answer["data"]
    assert problem.startswith("config.url "), problem
    assert f"{address} is " in problem
    assert "delivery.allow_private_networks" in problem
    assert "RELAY_ALLOW_PRIVATE_NETWORKS" in problem
    assert problem in answer["message"]


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://127.0.0.1:8000/hook", "127.0.0.1"),
        ("http://10.0.0.5/hook", "10.0.0.5"),
        ("http://[::1]:8000/hook", "::1"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254"),
        ("http://[::ffff:192.168.0.1]/hook", "192.168.0.1"),
        ("http://[2002:7f00:1::]:8000/hook", "2002:7f00:1::"),
    ],
)
async def test_api_refuses_a_blocked_ip_literal_at_creation(
    start_relay: Any, http: Any, database_url: str, url: str, address: str
) -> None:
    server = await relay_with(start_relay, http, database_url, [])
    status, answer = await call(http, server, "POST", DESTINATIONS, webhook(url))
    assert status == 422, answer
    assert_names_field_and_fix(answer, address)
    assert (await call(http, server, "GET", DESTINATIONS)) == (200, [])
    # A name that does not resolve is left to the delivery-time guard; a public IP
    # literal is fine.
    for fine in ("http://relay-test.invalid:8000/hook", "https://93.184.215.14/hook"):
        status, answer = await call(http, server, "POST", DESTINATIONS, webhook(fine))
        assert status == 201, answer


async def test_api_refuses_a_host_name_that_resolves_only_to_refused_addresses(
    start_relay: Any, http: Any, database_url: str
) -> None:
    server = await relay_with(start_relay, http, database_url, [])
    status, answer = await call(
        http, server, "POST", DESTINATIONS, webhook("http://localhost:8000/hook")
    )
    assert status == 422, answer
    [problem] = answer["data"]
    assert problem.startswith("config.url is refused by the SSRF guard: localhost resolves")
    assert "loopback" in problem and "RELAY_ALLOW_PRIVATE_NETWORKS" in problem
    status, created = await call(
        http, server, "POST", DESTINATIONS, webhook("https://93.184.215.14/hook")
    )
    assert status == 201, created
    path = f"{DESTINATIONS}/{created['id']}"
    status, answer = await call(
        http, server, "PATCH", path, {"config": {"url": "http://localhost/hook"}}
    )
    assert status == 422 and answer["data"][0].startswith("config.url "), answer


async def test_api_refuses_a_patch_to_a_blocked_ip_literal(
    start_relay: Any, http: Any, database_url: str
) -> None:
    server = await relay_with(start_relay, http, database_url, ["127.0.0.0/8"])
    status, created = await call(
        http, server, "POST", DESTINATIONS, webhook("http://127.0.0.1:8000/hook")
    )
    assert status == 201, created
    path = f"{DESTINATIONS}/{created['id']}"
    patch = {"config": {"url": "http://192.168.1.20/hook"}, "metadata": {"k": "v"}}
    status, answer = await call(http, server, "PATCH", path, patch)
    assert status == 422, answer
    assert_names_field_and_fix(answer, "192.168.1.20")
    status, current = await call(http, server, "GET", path)
    assert current["config"]["url"] == "http://127.0.0.1:8000/hook"
    assert current["metadata"] == {}
    # Patches that leave the url alone, or move it within the open range, still apply.
    status, answer = await call(http, server, "PATCH", path, {"metadata": {"k": "v"}})
    assert status == 200, answer
    status, answer = await call(
        http, server, "PATCH", path, {"config": {"url": "http://127.0.0.2/hook"}}
    )
    assert status == 200 and answer["config"]["url"] == "http://127.0.0.2/hook", answer


async def test_an_open_range_admits_its_addresses_in_every_form(
    start_relay: Any, http: Any, database_url: str
) -> None:
    server = await relay_with(start_relay, http, database_url, ["127.0.0.0/8"])
    for url in ("http://127.0.0.1:8000/", "http://[::ffff:127.0.0.1]/", "http://[2002:7f00:1::]/"):
        status, answer = await call(http, server, "POST", DESTINATIONS, webhook(url))
        assert status == 201, (url, answer)
    status, answer = await call(http, server, "POST", DESTINATIONS, webhook("http://10.0.0.1/"))
    assert status == 422, answer
    assert_names_field_and_fix(answer, "10.0.0.1")


CONFIG = """
[[tenants]]
id = "first"

[[tenants]]
id = "second"

[[tenants.destinations]]
id = "by-name"
url = "http://localhost:8000/hook"

[[tenants.destinations]]
id = "literal"
url = "{url}"
"""


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://127.0.0.1:8000/hook", "127.0.0.1"),
        ("https://[fd00:ec2::254]/", "fd00:ec2::254"),
        ("http://[64:ff9b::10.1.2.3]/", "64:ff9b::a01:203"),
    ],
)
def test_config_refuses_a_blocked_ip_literal_naming_file_key_and_fix(
    tmp_path: Path, url: str, address: str
) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(CONFIG.format(url=url))
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    error = info.value
    assert error.source == str(path)
    assert error.key == "tenants[1].destinations[1].url"
    assert f"{address} is " in error.problem and "not a public address" in error.problem
    assert "delivery.allow_private_networks" in error.fix
    assert "RELAY_ALLOW_PRIVATE_NETWORKS" in error.fix
    assert f"{path}: tenants[1].destinations[1].url: " in str(error)


def test_config_loads_a_blocked_literal_once_its_range_is_open(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(CONFIG.format(url="http://10.20.30.40/hook"))
    with pytest.raises(ConfigError):
        load_settings(path, env={})
    settings = load_settings(path, env={"RELAY_ALLOW_PRIVATE_NETWORKS": "10.0.0.0/8"})
    assert settings.tenants[1].destinations[1].url == "http://10.20.30.40/hook"
    # A name is not resolved at load: the delivery-time guard judges what it resolves to.
    assert settings.tenants[1].destinations[0].url == "http://localhost:8000/hook"


def test_settings_built_in_code_are_held_to_the_same_rule() -> None:
    tenants = [{"id": "t", "destinations": [{"id": "d", "url": "http://192.168.0.9/"}]}]
    with pytest.raises(ValueError, match=r"tenants\[0\]\.destinations\[0\]\.url"):
        make_settings("postgresql://unused/relay", tenants=tenants)
