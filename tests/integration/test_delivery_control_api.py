"""Delivery control through the API: relay's ``delivery_control`` extension to Outpost's
destination body (README, "Delivery control"), stored where the claim reads it."""

from __future__ import annotations

from typing import Any

from tests.integration.test_destination_addresses import DESTINATIONS, call, relay_with, webhook
from tests.support.relay import admin_headers


async def test_limits_are_set_shown_merged_and_cleared(
    start_relay: Any, http: Any, database_url: str, db: Any
) -> None:
    server = await relay_with(start_relay, http, database_url, ["127.0.0.0/8"])
    body = webhook("http://127.0.0.1:9/hook") | {
        "delivery_control": {"rate_limit_per_second": 50, "max_in_flight": 4}
    }
    status, created = await call(http, server, "POST", DESTINATIONS, body)
    assert status == 201, created
    assert created["delivery_control"] == {"rate_limit_per_second": 50.0, "max_in_flight": 4}
    row = await db.fetchrow(
        "SELECT rate_limit_per_second, rate_limit_burst, max_in_flight FROM relay.destinations"
    )
    assert tuple(row) == (50.0, None, 4)
    path = f"{DESTINATIONS}/{created['id']}"
    # Merge-patch: a key given changes, a null key clears, the others stay.
    status, patched = await call(
        http,
        server,
        "PATCH",
        path,
        {"delivery_control": {"rate_limit_burst": 10, "max_in_flight": None}},
    )
    assert status == 200, patched
    assert patched["delivery_control"] == {"rate_limit_per_second": 50.0, "rate_limit_burst": 10}
    # null clears them all; a destination without any shows no delivery_control.
    status, patched = await call(http, server, "PATCH", path, {"delivery_control": None})
    assert status == 200 and "delivery_control" not in patched, patched
    # A plain Outpost body is untouched by it.
    status, plain = await call(
        http, server, "POST", DESTINATIONS, webhook("http://127.0.0.1:9/other")
    )
    assert status == 201 and "delivery_control" not in plain


async def test_bad_limits_are_a_422_naming_each_field(
    start_relay: Any, http: Any, database_url: str
) -> None:
    server = await relay_with(start_relay, http, database_url, ["127.0.0.0/8"])
    body = webhook("http://127.0.0.1:9/hook") | {
        "delivery_control": {
            "rate_limit_per_second": 0,
            "rate_limit_burst": 2.5,
            "max_in_flight": "4",
            "rate": 3,
        }
    }
    status, answer = await call(http, server, "POST", DESTINATIONS, body)
    assert status == 422, answer
    fields = sorted(p.split(" ")[0] for p in answer["data"])
    assert fields == [
        "delivery_control.max_in_flight",
        "delivery_control.rate",
        "delivery_control.rate_limit_burst",
        "delivery_control.rate_limit_per_second",
    ], answer
    status, answer = await call(
        http,
        server,
        "POST",
        DESTINATIONS,
        webhook("http://127.0.0.1:9/h") | {"delivery_control": 5},
    )
    assert status == 422 and answer["data"][0].startswith("delivery_control must be"), answer
    status, answer = await call(
        http,
        server,
        "POST",
        DESTINATIONS,
        webhook("http://127.0.0.1:9/h") | {"delivery_control": {"rate_limit_burst": 5}},
    )
    assert answer["data"] == [
        "delivery_control.rate_limit_burst needs delivery_control.rate_limit_per_second"
    ], answer
    assert (await call(http, server, "GET", DESTINATIONS)) == (200, [])


async def test_ordering_is_set_through_the_api_and_routes_publishes_by_it(
    start_relay: Any, http: Any, database_url: str, db: Any
) -> None:
    server = await relay_with(start_relay, http, database_url, ["127.0.0.0/8"])
    body = webhook("http://127.0.0.1:9/hook") | {"delivery_control": {"ordering_key": "order"}}
    status, created = await call(http, server, "POST", DESTINATIONS, body)
    assert status == 201, created
    assert created["delivery_control"] == {"ordering_key": "order", "ordering_on_failure": "block"}
    path = f"{DESTINATIONS}/{created['id']}"
    status, answer = await call(
        http, server, "PATCH", path, {"delivery_control": {"ordering_on_failure": "sometimes"}}
    )
    assert status == 422, answer
    assert answer["data"] == ['delivery_control.ordering_on_failure must be "block" or "skip"']
    status, patched = await call(
        http, server, "PATCH", path, {"delivery_control": {"ordering_on_failure": "skip"}}
    )
    assert patched["delivery_control"]["ordering_on_failure"] == "skip", patched
    # A publish after the change (the route cache follows it) carries its key.
    for n, key in enumerate(["a", "b", None]):
        event = {"tenant_id": "acme", "topic": "t", "data": {"n": n}, "id": f"e{n}"}
        if key:
            event["metadata"] = {"order": key}
        async with http.post(
            server.make_url("/api/v1/publish"), json=event, headers=admin_headers()
        ) as resp:
            assert resp.status == 202, await resp.text()
    rows = await db.fetch("SELECT ordering_key FROM relay.deliveries ORDER BY id")
    assert [r["ordering_key"] for r in rows] == ["a", "b", None]
    status, patched = await call(
        http, server, "PATCH", path, {"delivery_control": {"ordering_key": None}}
    )
    assert "delivery_control" not in patched, patched


async def test_a_tenants_defaults_are_set_through_the_api(
    start_relay: Any, http: Any, database_url: str, db: Any
) -> None:
    server = await relay_with(start_relay, http, database_url, ["127.0.0.1/32"])
    tenant = "/api/v1/tenants/acme"
    status, answer = await call(
        http, server, "PUT", tenant, {"delivery_control": {"max_in_flight": 3}}
    )
    assert status == 200 and answer["delivery_control"] == {"max_in_flight": 3}, answer
    # Absent: kept (a PUT of metadata alone leaves them).
    status, answer = await call(http, server, "PUT", tenant, {"metadata": {"k": "v"}})
    assert answer["delivery_control"] == {"max_in_flight": 3}, answer
    row = await db.fetchrow("SELECT max_in_flight, rate_limit_per_second FROM relay.tenants")
    assert tuple(row) == (3, None)
    status, answer = await call(
        http,
        server,
        "PUT",
        tenant,
        {"delivery_control": {"ordering_key": "order", "max_in_flight": 0}},
    )
    assert status == 422, answer
    assert sorted(p.split(" ")[0] for p in answer["data"]) == [
        "delivery_control.max_in_flight",
        "delivery_control.ordering_key",
    ]
    status, answer = await call(http, server, "PUT", tenant, {"delivery_control": None})
    assert status == 200 and "delivery_control" not in answer, answer
