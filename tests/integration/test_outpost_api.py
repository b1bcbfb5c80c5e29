"""The Outpost-compatible API over plain HTTP: the edges the SDK does not show."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime
from typing import Any

import jwt
import pytest

from relay.api.auth import issue_tenant_token, jwt_key
from relay.appkeys import ENGINE, SETTINGS
from relay.db.admin import live_tenant_created_at
from tests.support.relay import ADMIN_KEY, admin_headers, make_settings

API = "/api/v1"
CONFIG_FILE = "/etc/relay/relay.toml"


def config_tenant(url: str) -> list[dict[str, Any]]:
    return [{"id": "declared", "destinations": [{"id": "hook", "url": url, "topics": "*"}]}]


@pytest.fixture
async def relay(start_relay: Any, database_url: str, receiver: Any) -> Any:
    settings = make_settings(
        database_url, config_path=CONFIG_FILE, tenants=config_tenant(receiver.url("/declared"))
    )
    return await start_relay(settings)


class Client:
    def __init__(self, http: Any, server: Any, headers: dict[str, str] | None = None) -> None:
        self.http, self.server = http, server
        self.headers = admin_headers() if headers is None else headers

    async def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        url = self.server.make_url(API + path)
        if body is not None:
            kwargs["json"] = body
        async with self.http.request(method, url, headers=self.headers, **kwargs) as resp:
            assert resp.content_type == "application/json", (resp.status, await resp.text())
            return resp.status, await resp.json()


@pytest.fixture
def api(http: Any, relay: Any) -> Client:
    return Client(http, relay)


async def make_destination(api: Client, tenant: str, url: str, **extra: Any) -> dict[str, Any]:
    await api.call("PUT", f"/tenants/{tenant}")
    body = {"type": "webhook", "topics": "*", "config": {"url": url}} | extra
    status, created = await api.call("POST", f"/tenants/{tenant}/destinations", body)
    assert status == 201, created
    return created  # type: ignore[no-any-return]


async def test_publish_delivers_the_exact_data_bytes(
    api: Client, http: Any, relay: Any, receiver: Any, db: Any
) -> None:
    await make_destination(api, "acme", receiver.url("/exact"))
    data = b'{ "z" : 1.50,\n  "a":[1e2, "\\u00e9", {"k": null}] }'
    body = b'{"tenant_id": "acme", "data": ' + data + b', "topic": "t"}'
    headers = admin_headers() | {"Content-Type": "application/json"}
    async with http.post(relay.make_url(API + "/publish"), data=body, headers=headers) as resp:
        assert resp.status == 202
        published = await resp.json()
    [request] = await receiver.wait_for(1, path="/exact")
    assert request.body == data
    status, event = await api.call("GET", f"/events/{published['id']}")
    assert status == 200 and list(event["data"]) == ["z", "a"]
    assert event["data"]["a"][1] == "é"


async def test_repeat_publish_is_a_durable_duplicate(api: Client, receiver: Any, db: Any) -> None:
    created = await make_destination(api, "acme", receiver.url())
    body = {"id": "evt-1", "tenant_id": "acme", "topic": "t", "data": {"n": 1}}
    assert await api.call("POST", "/publish", body) == (
        202,
        {"id": "evt-1", "duplicate": False, "destination_ids": [created["id"]]},
    )
    status, again = await api.call("POST", "/publish", body | {"data": {"n": 2}})
    assert status == 202 and again["duplicate"] is True
    await receiver.wait_for(1)
    await asyncio.sleep(0.3)
    assert len(receiver.requests) == 1
    assert await db.fetchval("SELECT count(*) FROM relay.events") == 1


async def test_tenant_upsert_get_list_delete(api: Client, db: Any) -> None:
    status, created = await api.call("PUT", "/tenants/t1", {"metadata": {"plan": "pro"}})
    assert status == 201 and created["metadata"] == {"plan": "pro"}
    status, updated = await api.call("PUT", "/tenants/t1")
    assert status == 200 and updated["metadata"] == {"plan": "pro"}, "absent metadata is kept"
    status, cleared = await api.call("PUT", "/tenants/t1", {"metadata": None})
    # Empty metadata is {} (Outpost leaves the key out), never null.
    assert status == 200 and cleared["metadata"] == {}
    for n in range(2, 6):
        await api.call("PUT", f"/tenants/t{n}")

    seen: list[str] = []
    status, page = await api.call("GET", "/tenants", params={"limit": "2", "dir": "asc"})
    assert status == 200 and page["count"] == 6 and page["pagination"]["prev"] is None
    pages = [page]
    while page["pagination"]["next"]:
        seen += [t["id"] for t in page["models"]]
        _, page = await api.call(
            "GET",
            "/tenants",
            params={"limit": "2", "dir": "asc", "next": page["pagination"]["next"]},
        )
        pages.append(page)
    seen += [t["id"] for t in page["models"]]
    assert seen == ["declared", "t1", "t2", "t3", "t4", "t5"]
    _, back = await api.call(
        "GET", "/tenants", params={"limit": "2", "dir": "asc", "prev": page["pagination"]["prev"]}
    )
    assert back["models"] == pages[-2]["models"]

    _, filtered = await api.call("GET", "/tenants?id[0]=t2&id[1]=t4")
    assert sorted(t["id"] for t in filtered["models"]) == ["t2", "t4"]
    assert filtered["count"] == 2

    assert await api.call("DELETE", "/tenants/t1") == (200, {"success": True})
    status, gone = await api.call("GET", "/tenants/t1")
    assert status == 404 and gone["status"] == 404 and "t1" in gone["message"]
    assert (await api.call("DELETE", "/tenants/t1"))[0] == 404
    # The row stays for history; a new PUT creates the tenant afresh.
    assert await db.fetchval("SELECT deleted_at IS NOT NULL FROM relay.tenants WHERE id='t1'")
    assert (await api.call("PUT", "/tenants/t1"))[0] == 201


async def test_config_declared_tenants_are_shown_but_not_changed(api: Client) -> None:
    status, tenant = await api.call("GET", "/tenants/declared")
    assert status == 200 and tenant["destinations_count"] == 1
    status, [hook] = await api.call("GET", "/tenants/declared/destinations")
    assert status == 200 and hook["id"] == "hook" and hook["topics"] == ["*"]
    attempts = [
        ("PUT", "/tenants/declared", {"metadata": {"a": "b"}}),
        ("DELETE", "/tenants/declared", None),
        ("PATCH", "/tenants/declared/destinations/hook", {"topics": ["x"]}),
        ("PUT", "/tenants/declared/destinations/hook/disable", None),
        ("PUT", "/tenants/declared/destinations/hook/enable", None),
        ("DELETE", "/tenants/declared/destinations/hook", None),
    ]
    for method, path, body in attempts:
        status, answer = await api.call(method, path, body)
        assert status == 409, (method, path, answer)
        assert CONFIG_FILE in answer["message"]
    # Destinations added through the API under a declared tenant are the API's.
    status, _ = await api.call(
        "POST",
        "/tenants/declared/destinations",
        {"type": "webhook", "topics": "*", "config": {"url": "https://example.com/h"}},
    )
    assert status == 201


async def test_destination_validation_lists_every_problem(api: Client) -> None:
    await api.call("PUT", "/tenants/acme")
    status, answer = await api.call(
        "POST",
        "/tenants/acme/destinations",
        {
            "type": "webhook",
            "topics": [],
            "config": {"url": "not a url", "custom_headers": '{"Content-Type": "x"}'},
            "filter": {"$bogus": 1},
            "disabled_at": "2999-01-01T00:00:00Z",
        },
    )
    assert status == 422
    assert len(answer["data"]) == 5, answer
    # Every Outpost type is validated by its schema, naming each field as Outpost does.
    status, answer = await api.call(
        "POST", "/tenants/acme/destinations", {"type": "aws_sqs", "topics": "*", "config": {}}
    )
    assert status == 422 and answer["data"] == [
        "config.queue_url is required",
        "credentials.key is required",
        "credentials.secret is required",
    ]
    status, answer = await api.call(
        "POST", "/tenants/acme/destinations", {"type": "sqs", "topics": "*", "config": {}}
    )
    assert status == 422 and "'aws_sqs'" in answer["message"] and "'webhook'" in answer["message"]
    status, answer = await api.call("POST", "/tenants/acme/destinations", {"type": "webhook"})
    assert status == 422 and sorted(answer["data"]) == ["config is required", "topics is required"]
    status, answer = await api.call(
        "POST",
        "/tenants/nobody/destinations",
        {"type": "webhook", "topics": "*", "config": {"url": "https://example.com"}},
    )
    assert status == 404


async def test_patch_is_a_merge_patch(api: Client, receiver: Any) -> None:
    created = await make_destination(
        api, "acme", receiver.url(), filter={"topic": "a"}, metadata={"k": "v"}, id="d1"
    )
    path = f"/tenants/acme/destinations/{created['id']}"
    status, patched = await api.call("PATCH", path, {"filter": None, "disabled_at": "2020-01-01"})
    assert status == 200
    assert patched["filter"] is None and patched["disabled_at"] == "2020-01-01T00:00:00Z"
    assert patched["metadata"] == {"k": "v"} and patched["config"]["url"] == receiver.url()
    status, patched = await api.call("PATCH", path, {"disabled_at": None, "metadata": None})
    assert status == 200 and patched["disabled_at"] is None and patched["metadata"] == {}
    assert patched["delivery_metadata"] == {}
    status, answer = await api.call(
        "PATCH", path, {"type": "aws_sqs", "topics": None, "config": {"url": None}}
    )
    assert status == 422 and len(answer["data"]) == 3
    # An id freed by a delete can be used again.
    assert (await api.call("DELETE", path))[0] == 200
    assert (await api.call("PATCH", path, {"topics": ["a"]}))[0] == 404
    again = await make_destination(api, "acme", receiver.url(), id="d1")
    assert again["id"] == "d1" and again["filter"] is None


async def test_values_outpost_converts_are_converted(api: Client, receiver: Any) -> None:
    """Non-string metadata becomes strings, and rotate_secret is read, as in Outpost."""
    metadata = {"n": 42, "ok": True, "none": None, "obj": {"b": 1, "a": [2]}, "s": "x"}
    status, tenant = await api.call("PUT", "/tenants/acme", {"metadata": metadata})
    assert status == 201
    assert tenant["metadata"] == {
        "n": "42",
        "ok": "true",
        "none": "",
        "obj": '{"a":[2],"b":1}',
        "s": "x",
    }
    created = await make_destination(
        api, "acme", receiver.url(), metadata={"n": 1.5, "f": False}, delivery_metadata={"n": 7}
    )
    assert created["metadata"] == {"n": "1.5", "f": "false"}
    assert created["delivery_metadata"] == {"n": "7"}
    path = f"/tenants/acme/destinations/{created['id']}"
    # A merge patch: null still removes a key.
    status, patched = await api.call("PATCH", path, {"metadata": {"n": None, "x": 3}})
    assert status == 200 and patched["metadata"] == {"f": "false", "x": "3"}

    secret = created["credentials"]["secret"]
    for falsy in ("false", "0", "no", "", False, None):
        status, same = await api.call("PATCH", path, {"credentials": {"rotate_secret": falsy}})
        assert status == 200 and same["credentials"]["secret"] == secret, falsy
    for truthy in ("true", "Yes", 1, True):
        status, rotated = await api.call("PATCH", path, {"credentials": {"rotate_secret": truthy}})
        assert status == 200, rotated
        assert rotated["credentials"]["previous_secret"] == secret, truthy
        assert rotated["credentials"]["secret"] != secret
        secret = rotated["credentials"]["secret"]
    # A new destination has nothing to rotate: 422, as Outpost answers.
    status, answer = await api.call(
        "POST",
        "/tenants/acme/destinations",
        {
            "type": "webhook",
            "topics": "*",
            "config": {"url": receiver.url()},
            "credentials": {"rotate_secret": "true"},
        },
    )
    assert status == 422 and "rotate_secret" in answer["message"]


async def publish_at(api: Client, tenant: str, n: int, when: str) -> str:
    body = {"tenant_id": tenant, "topic": f"t{n % 2}", "data": {"n": n}, "time": when}
    status, answer = await api.call("POST", "/publish", body)
    assert status == 202, answer
    return str(answer["id"])


async def walk(api: Client, path: str, params: dict[str, str]) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        query = params | ({"next": cursor} if cursor else {})
        status, page = await api.call("GET", path, params=query)
        assert status == 200, page
        pages.append([m["id"] for m in page["models"]])
        cursor = page["pagination"]["next"]
        if not cursor:
            return pages


async def test_event_pages_stay_correct_within_a_time_window(api: Client) -> None:
    await api.call("PUT", "/tenants/acme")
    await api.call("PUT", "/tenants/other")
    ids = [await publish_at(api, "acme", n, f"2026-01-0{1 + n}T00:00:00Z") for n in range(7)]
    await publish_at(api, "other", 99, "2026-01-03T00:00:00Z")
    window = {"tenant_id": "acme", "time[gte]": "2026-01-02", "time[lt]": "2026-01-07T00:00:00Z"}
    desc = await walk(api, "/events", window | {"limit": "2"})
    assert desc == [ids[5:3:-1], ids[3:1:-1], [ids[1]]]
    asc = await walk(api, "/events", window | {"limit": "3", "dir": "asc"})
    assert asc == [ids[1:4], ids[4:6]]
    by_topic = await walk(api, "/events", {"tenant_id": "acme", "topic": "t1", "limit": "2"})
    assert [i for page in by_topic for i in page] == [ids[5], ids[3], ids[1]]
    everyone = await walk(api, "/events", {"limit": "100"})
    assert len(everyone[0]) == 8
    # prev from the last page returns the page before it.
    _, first = await api.call("GET", "/events", params=window | {"limit": "2"})
    _, second = await api.call(
        "GET", "/events", params=window | {"limit": "2", "next": first["pagination"]["next"]}
    )
    _, back = await api.call(
        "GET", "/events", params=window | {"limit": "2", "prev": second["pagination"]["prev"]}
    )
    assert [m["id"] for m in back["models"]] == desc[0]
    assert back["pagination"]["prev"] is None


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/events?dir=up", "dir"),
        ("/events?next=not-a-cursor", "next"),
        ("/events?next=a&prev=b", "next"),
        ("/events?time[gte]=yesterday", "time[gte]"),
        # Outpost's one refused time key: an operator it knows and does not support.
        ("/attempts?time[any]=2026-01-01", "time[any]"),
        ("/events?order_by=topic", "order_by"),
        ("/attempts?status=maybe", "status"),
        # /tenants refuses a limit outside 1-100, as Outpost does (the history listings
        # cap theirs: test_what_outpost_ignores_or_corrects_is_ignored_or_corrected).
        ("/tenants?limit=101", "limit"),
        ("/tenants?limit=ten", "limit"),
    ],
)
async def test_bad_query_parameters_are_400_naming_them(api: Client, path: str, name: str) -> None:
    status, answer = await api.call("GET", path)
    assert status == 400 and answer["status"] == 400
    assert name in answer["data"] and answer["message"]


async def test_what_outpost_ignores_or_corrects_is_ignored_or_corrected(
    api: Client, receiver: Any, db: Any
) -> None:
    """A history listing's limit outside 1-1000 is capped (not a number, or below 1: the
    default 100), and unknown include values and time[...] keys are ignored."""
    created = await make_destination(api, "acme", receiver.url())
    for n in range(3):
        await publish_at(api, "acme", n, f"2026-01-0{1 + n}T00:00:00Z")
    paths = ("/events", "/attempts", f"/tenants/acme/destinations/{created['id']}/attempts")
    for path in paths:
        for limit, effective in (("0", 100), ("-5", 100), ("ten", 100), ("1.5", 100)):
            status, page = await api.call("GET", path, params={"limit": limit})
            assert status == 200 and page["pagination"]["limit"] == effective, (path, limit)
        status, page = await api.call("GET", path, params={"limit": "1001"})
        assert status == 200 and page["pagination"]["limit"] == 1000, path
    status, page = await api.call("GET", "/events", params={"limit": "2"})
    assert len(page["models"]) == 2 and page["pagination"]["limit"] == 2
    # time[since] is no operator: ignored, the listing is whole; the known ones apply.
    query = {"time[since]": "2026-01-03T00:00:00Z", "time[lt]": "2026-01-03T00:00:00Z"}
    status, page = await api.call("GET", "/events", params=query)
    assert status == 200 and len(page["models"]) == 2

    async def attempted() -> bool:
        return bool(await db.fetchval("SELECT count(*) = 3 FROM relay.attempts"))

    async with asyncio.timeout(10):
        while not await attempted():
            await asyncio.sleep(0.05)
    status, page = await api.call(
        "GET", "/attempts", params=[("include", "everything"), ("include", "event")]
    )
    assert status == 200 and len(page["models"]) == 3
    first = page["models"][0]
    assert "event" in first and "data" not in first["event"] and "everything" not in first
    status, page = await api.call("GET", "/attempts", params={"include": "nothing,response_data"})
    assert status == 200 and "response_data" in page["models"][0]
    assert "event" not in page["models"][0]


async def test_an_id_two_tenants_used_reads_as_the_one_published_last(
    api: Client, http: Any, relay: Any
) -> None:
    """GET /events/{id} without tenant_id: deterministic where Outpost answers either."""
    for tenant, when in (("acme", "2030-01-01T00:00:00Z"), ("globex", "2020-01-01T00:00:00Z")):
        await api.call("PUT", f"/tenants/{tenant}")
        body = {"id": "shared", "tenant_id": tenant, "data": {"t": tenant}, "time": when}
        assert (await api.call("POST", "/publish", body))[0] == 202
    # globex published last (though its event is dated earlier): publish order decides.
    for _ in range(3):
        status, event = await api.call("GET", "/events/shared")
        assert (status, event["tenant_id"], event["data"]) == (200, "globex", {"t": "globex"})
    status, event = await api.call("GET", "/events/shared", params={"tenant_id": "acme"})
    assert (status, event["tenant_id"]) == (200, "acme")
    token = (await api.call("GET", "/tenants/acme/token"))[1]["token"]
    scoped = Client(http, relay, {"Authorization": f"Bearer {token}"})
    status, event = await scoped.call("GET", "/events/shared")
    assert (status, event["tenant_id"]) == (200, "acme")


async def test_cursor_from_another_listing_or_direction_is_refused(api: Client) -> None:
    await api.call("PUT", "/tenants/acme")
    for n in range(3):
        await publish_at(api, "acme", n, f"2026-01-0{1 + n}T00:00:00Z")
    _, page = await api.call("GET", "/events", params={"limit": "1"})
    cursor = page["pagination"]["next"]
    status, answer = await api.call("GET", "/events", params={"dir": "asc", "next": cursor})
    assert status == 400 and "direction" in answer["message"]
    status, answer = await api.call("GET", "/attempts", params={"next": cursor})
    assert status == 400 and "another listing" in answer["message"]


async def test_retry_rules(api: Client, receiver: Any, db: Any) -> None:
    await api.call("PUT", "/tenants/acme")
    status, published = await api.call(
        "POST", "/publish", {"tenant_id": "acme", "topic": "order.created", "data": {"n": 1}}
    )
    assert status == 202 and published["destination_ids"] == []
    # Created after the event: a retry creates its first delivery, marked manual.
    later = await make_destination(api, "acme", receiver.url("/later"), topics=["order.*", "x"])
    assert later["topics"] == ["order.*", "x"]
    narrow = await make_destination(api, "acme", receiver.url("/narrow"), topics=["other"])
    event_id = published["id"]
    # Never routed there, and not subscribed: 404, as Outpost answers a destination the
    # event has no attempt to.
    status, answer = await api.call(
        "POST", "/retry", {"event_id": event_id, "destination_id": narrow["id"]}
    )
    assert status == 404 and "never routed" in answer["message"], answer
    status, answer = await api.call(
        "POST", "/retry", {"event_id": "nope", "destination_id": later["id"]}
    )
    assert status == 404 and "nope" in answer["message"]
    status, answer = await api.call(
        "POST", "/retry", {"event_id": event_id, "destination_id": "nope"}
    )
    assert status == 404 and "nope" in answer["message"]
    status, answer = await api.call("POST", "/retry", {"event_id": event_id})
    assert status == 422 and answer["data"] == ["destination_id is required"]
    assert await api.call(
        "POST", "/retry", {"event_id": event_id, "destination_id": later["id"]}
    ) == (202, {"success": True})
    [request] = await receiver.wait_for(1, path="/later")
    assert request.json() == {"n": 1}

    async def attempt() -> Any:
        return await db.fetchrow("SELECT manual, number, status FROM relay.attempts")

    async with asyncio.timeout(10):
        while await attempt() is None:
            await asyncio.sleep(0.05)
    assert tuple(await attempt()) == (True, 1, "success")

    # Routed there once, and no longer matching or enabled: 400 (as Outpost), not 404.
    retry_later = {"event_id": event_id, "destination_id": later["id"]}
    path = f"/tenants/acme/destinations/{later['id']}"
    assert (await api.call("PATCH", path, {"topics": ["x"]}))[0] == 200
    status, answer = await api.call("POST", "/retry", retry_later)
    assert status == 400 and "not subscribed" in answer["message"], answer
    assert (await api.call("PUT", path + "/disable"))[0] == 200
    status, answer = await api.call("POST", "/retry", retry_later)
    assert status == 400 and "disabled" in answer["message"], answer


async def test_tenant_tokens(api: Client, http: Any, relay: Any) -> None:
    await api.call("PUT", "/tenants/acme")
    status, answer = await api.call("GET", "/tenants/acme/token")
    assert status == 200 and answer["tenant_id"] == "acme"
    claims = jwt.decode(answer["token"], options={"verify_signature": False})
    assert claims["iss"] == "outpost" and claims["sub"] == "acme"
    assert claims["exp"] - claims["iat"] == 24 * 3600
    assert (await api.call("GET", "/tenants/nobody/token"))[0] == 404

    scoped = Client(http, relay, {"Authorization": f"Bearer {answer['token']}"})
    assert (await scoped.call("GET", "/tenants/acme"))[0] == 200
    assert (await scoped.call("PUT", "/tenants/globex"))[0] == 403
    assert (await scoped.call("GET", "/tenants/globex/destinations"))[0] == 403
    status, _ = await scoped.call(
        "POST",
        "/tenants/acme/destinations",
        {"type": "webhook", "topics": "*", "config": {"url": "https://example.com/x"}},
    )
    assert status == 201
    status, answer = await scoped.call(
        "POST",
        "/tenants/acme/destinations",
        {
            "type": "webhook",
            "topics": "*",
            "config": {"url": "https://example.com/x"},
            "credentials": {"secret": "mine"},
        },
    )
    assert status == 403 and "admin" in answer["message"]
    # Admin-only routes: a valid tenant token is known but not allowed there (403, as
    # Outpost answers), even for its own tenant.
    for method, path, body in (
        ("POST", "/publish", {"tenant_id": "acme", "data": {}}),
        ("GET", "/tenants/acme/token", None),
    ):
        status, answer = await scoped.call(method, path, body)
        assert status == 403 and "admin API key" in answer["message"], (path, answer)

    def forged(**claims: Any) -> Client:
        now = int(time.time())
        payload = {"iss": "outpost", "sub": "acme", "iat": now, "exp": now + 60} | claims
        token = jwt.encode(payload, "not-relay-s-key-but-long-enough-for-hs256", algorithm="HS256")
        return Client(http, relay, {"Authorization": f"Bearer {token}"})

    assert (await forged().call("GET", "/tenants/acme"))[0] == 401
    # A token relay did not sign is no tenant's: 401 on admin-only routes too.
    assert (await forged().call("POST", "/publish", {"tenant_id": "acme", "data": {}}))[0] == 401
    # Signed with relay's key but past its 24 hours.
    created = await live_created(relay, "acme")
    stale = issue_tenant_token(
        relay.app[SETTINGS], "acme", created, now=time.time() - 2 * 24 * 3600
    )
    expired = Client(http, relay, {"Authorization": f"Bearer {stale}"})
    assert (await expired.call("GET", "/tenants/acme"))[0] == 401
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Basic " + ADMIN_KEY}):
        status, answer = await Client(http, relay, headers).call("GET", "/events")
        assert status == 401 and answer["status"] == 401


async def test_a_deleted_tenants_token_is_refused_even_after_the_id_is_reused(
    api: Client, http: Any, relay: Any
) -> None:
    await api.call("PUT", "/tenants/acme")
    old_token = (await api.call("GET", "/tenants/acme/token"))[1]["token"]
    holder = Client(http, relay, {"Authorization": f"Bearer {old_token}"})
    assert (await holder.call("GET", "/events"))[0] == 200
    assert (await api.call("DELETE", "/tenants/acme"))[0] == 200
    # Deleted: the token neither reads history nor brings the tenant back.
    for method, path in (("GET", "/events"), ("PUT", "/tenants/acme"), ("GET", "/tenants/acme")):
        status, answer = await holder.call(method, path)
        assert status == 401, (method, path)
        assert "deleted" in answer["message"]
    # Outpost checks admin-only routes before it looks the tenant up: still a 403 there.
    assert (await holder.call("GET", "/tenants/acme/token"))[0] == 403
    # The id handed out again at once, as a rule within the second the token was issued
    # in: still refused (the token names the incarnation it was issued for).
    assert (await api.call("PUT", "/tenants/acme"))[0] == 201
    assert (await holder.call("GET", "/events"))[0] == 401
    new_token = (await api.call("GET", "/tenants/acme/token"))[1]["token"]
    fresh = Client(http, relay, {"Authorization": f"Bearer {new_token}"})
    assert (await fresh.call("GET", "/events"))[0] == 200


async def test_tokens_from_before_the_incarnation_claim_follow_the_second_rule(
    api: Client, http: Any, relay: Any
) -> None:
    """Tokens issued by relay versions without the relay_tenant claim still work until
    they expire, unless issued before the tenant's current incarnation was created."""
    await api.call("PUT", "/tenants/acme")
    created = await live_created(relay, "acme")
    key = jwt_key(relay.app[SETTINGS])
    assert key is not None

    def older(issued: int) -> Client:
        claims = {"iss": "outpost", "sub": "acme", "iat": issued, "exp": issued + 3600}
        token = jwt.encode(claims, key, algorithm="HS256")
        return Client(http, relay, {"Authorization": f"Bearer {token}"})

    second = int(created.timestamp())
    assert (await older(second).call("GET", "/events"))[0] == 200
    assert (await older(second - 1).call("GET", "/events"))[0] == 401


async def live_created(relay: Any, tenant_id: str) -> datetime:
    async with relay.app[ENGINE].connect() as conn:
        created = await live_tenant_created_at(conn, tenant_id)
    assert created is not None
    return created


async def test_catalogue_types_and_openapi(
    api: Client, http: Any, start_relay: Any, database_url: str
) -> None:
    assert await api.call("GET", "/topics") == (200, [])
    status, types = await api.call("GET", "/destination-types")
    # Outpost's nine types, in Outpost's order, whether or not this relay delivers them;
    # then relay's own.
    assert status == 200 and [t["type"] for t in types] == [
        "webhook",
        "hookdeck",
        "aws_sqs",
        "aws_kinesis",
        "aws_s3",
        "gcp_pubsub",
        "azure_servicebus",
        "rabbitmq",
        "kafka",
        "nats_jetstream",
        "redis_streams",
    ]
    assert (await api.call("GET", "/destination-types/webhook"))[1]["type"] == "webhook"
    assert (await api.call("GET", "/destination-types/kafka"))[1]["label"] == "Apache Kafka"
    assert (await api.call("GET", "/destination-types/nats"))[0] == 404
    status, spec = await Client(http, api.server, {}).call("GET", "/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.")
    # The document lists what relay implements: the metrics API and the portal link.
    assert {"/publish", "/metrics/events", "/metrics/attempts"} <= set(spec["paths"])
    assert "/tenants/{tenant_id}/portal" in spec["paths"]
    status, answer = await api.call("GET", "/no-such-route")
    assert status == 404 and answer == {"status": 404, "message": "not found"}
    status, answer = await api.call("DELETE", "/publish")
    assert status == 405 and answer["status"] == 405


async def test_history_pages_are_index_range_scans(database_url: str, db: Any) -> None:
    from datetime import UTC, datetime

    from sqlalchemy import BigInteger

    from relay.db import history
    from relay.db.engine import create_engine

    await db.execute("INSERT INTO relay.tenants (id) SELECT 't' || n FROM generate_series(1, 20) n")
    await db.execute(
        "INSERT INTO relay.events (tenant_id, id, data, time)"
        " SELECT 't' || (n % 20 + 1), 'e' || n, '{}', now() - n * interval '1 second'"
        " FROM generate_series(1, 20000) n"
    )
    await db.execute("ANALYZE relay.events")
    after = history.Position(datetime.now(UTC), 10**9)
    # The events are in a slice's partition, whose indexes PostgreSQL named when relay
    # attached it (events_<slice>_tenant_id_time_seq_idx is ix_events_tenant_id_time's).
    cases = [
        (history.EventFilter(tenant_ids=["t3"]), "_tenant_id_time_seq_idx"),
        (history.EventFilter(), "_time_seq_idx"),
        (history.EventFilter(ids=["e17"]), "_id_idx"),
    ]
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            for f, index in cases:
                where = history._event_where(f)
                where.seek("e.time, e.seq", after, True, BigInteger)
                sql = "EXPLAIN " + history.EVENTS.format(
                    where=where.sql(), order_by="e.time DESC, e.seq DESC"
                )
                result = await conn.execute(where.statement(sql), where.params | {"limit": 100})
                plan = "\n".join(row[0] for row in result)
                assert index + " on events_2" in plan, plan
                # Each slice's range, merged in order: no sort of the whole history.
                sorts = re.findall(r"->  Sort  |^Sort  ", plan.split("SubPlan")[0], re.M)
                assert not sorts or index == "_id_idx", plan
    finally:
        await engine.dispose()
