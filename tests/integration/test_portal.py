"""The tenant portal over HTTP (no browser): the link, the session, CSRF, tenant scoping,
escaping and the Content-Security-Policy, against a live relay and real receivers.

The browser tests (tests/browser/) show the same in Chromium; these pin the rules.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import aiohttp
import jwt
import pytest
from outpost_sdk import Outpost
from yarl import URL

from relay.web import sessions
from tests.support.receiver import Reply
from tests.support.relay import ADMIN_KEY, admin_headers, make_settings, post_publish

SCRIPT = "<script>alert('data')</script>"
IMG = '<img src=x onerror="alert(1)">'


@pytest.fixture
async def relay(start_relay: Any, database_url: str) -> Any:
    return await start_relay(make_settings(database_url, topics=["order.created", "user.deleted"]))


async def api(http: aiohttp.ClientSession, relay: Any, method: str, path: str, **kw: Any) -> Any:
    async with http.request(
        method, relay.make_url("/api/v1" + path), headers=admin_headers(), **kw
    ) as resp:
        assert resp.status < 300, (resp.status, await resp.text())
        return await resp.json()


async def tenant_with_destination(
    http: aiohttp.ClientSession, relay: Any, tenant: str, url: str, dest: str
) -> None:
    await api(http, relay, "PUT", f"/tenants/{tenant}")
    await api(
        http,
        relay,
        "POST",
        f"/tenants/{tenant}/destinations",
        json={"id": dest, "type": "webhook", "topics": "*", "config": {"url": url}},
    )


async def portal_link(relay: Any, tenant: str, **kw: Any) -> str:
    async with Outpost(api_key=ADMIN_KEY, server_url=str(relay.make_url("/api/v1"))) as sdk:
        answer = await sdk.tenants.get_portal_url_async(tenant_id=tenant, **kw)
    assert answer.tenant_id == tenant
    assert answer.redirect_url is not None
    return answer.redirect_url


async def browser_session(relay: Any, tenant: str) -> aiohttp.ClientSession:
    """A client with a cookie jar that opened the tenant's portal link."""
    client = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    link = await portal_link(relay, tenant)
    async with client.get(link) as resp:
        assert resp.status == 200, await resp.text()
    return client


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf-token" content="([^"]+)"', page)
    assert match, "no CSRF token on the page"
    return match.group(1)


async def wait_attempts(db: Any, count: int, timeout: float = 10.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        rows = await db.fetch("SELECT * FROM relay.attempts ORDER BY id")
        if len(rows) >= count or time.monotonic() > deadline:
            return list(rows)
        await asyncio.sleep(0.05)


async def test_sdk_link_opens_a_session_and_leaves_the_address_bar(
    relay: Any, http: aiohttp.ClientSession, receiver: Any
) -> None:
    await tenant_with_destination(http, relay, "acme", receiver.url("/acme"), "acme-hook")
    link = await portal_link(relay, "acme", theme="dark")
    url = URL(link)
    assert url.path == "/portal" and url.query["tenant_id"] == "acme"
    assert url.query["theme"] == "dark"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as client:
        async with client.get(link, allow_redirects=False) as resp:
            assert resp.status == 303
            # The token is exchanged for a cookie and gone from the next URL.
            assert resp.headers["Location"] == "/portal/destinations"
            cookie = resp.cookies[sessions.PORTAL_COOKIE]
            assert cookie["httponly"] and cookie["samesite"] == "Lax"
            assert cookie["path"] == "/portal"
        async with client.get(relay.make_url("/portal/destinations")) as resp:
            assert resp.status == 200
            page = await resp.text()
            assert "acme-hook" in page and "theme-dark" in page
            csp = resp.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp
            assert resp.headers["Referrer-Policy"] == "same-origin"
    # An API token is no portal link, and a link is no API token.
    async with http.get(
        relay.make_url("/api/v1/tenants/acme/token"), headers=admin_headers()
    ) as resp:
        api_token = (await resp.json())["token"]
    async with http.get(relay.make_url("/portal"), params={"token": api_token}) as resp:
        assert resp.status == 401
    async with http.get(
        relay.make_url("/api/v1/tenants/acme"),
        headers={"Authorization": f"Bearer {url.query['token']}"},
    ) as resp:
        assert resp.status == 401


async def test_link_refusals(relay: Any, http: aiohttp.ClientSession, receiver: Any) -> None:
    await tenant_with_destination(http, relay, "acme", receiver.url("/acme"), "acme-hook")
    # Needs the admin key, a known tenant and a known theme.
    async with http.get(relay.make_url("/api/v1/tenants/acme/portal")) as resp:
        assert resp.status == 401
    async with http.get(
        relay.make_url("/api/v1/tenants/nobody/portal"), headers=admin_headers()
    ) as resp:
        assert resp.status == 404
    async with http.get(
        relay.make_url("/api/v1/tenants/acme/portal"),
        params={"theme": "neon"},
        headers=admin_headers(),
    ) as resp:
        assert resp.status == 422 and "theme" in (await resp.json())["message"]
    async with http.get(
        relay.make_url("/api/v1/tenants/acme/token"), headers=admin_headers()
    ) as resp:
        tenant_token = (await resp.json())["token"]
    async with http.get(
        relay.make_url("/api/v1/tenants/acme/portal"),
        headers={"Authorization": f"Bearer {tenant_token}"},
    ) as resp:
        assert resp.status == 403
    settings = make_settings("postgresql://unused/x")
    async with aiohttp.ClientSession() as client:
        created = (await api(client, relay, "GET", "/tenants/acme"))["created_at"]
    from datetime import datetime

    born = datetime.fromisoformat(created)
    expired = sessions.issue_link_token(settings, "acme", born, now=time.time() - 3600)
    async with http.get(relay.make_url("/portal"), params={"token": expired}) as resp:
        assert resp.status == 401 and "expired" in await resp.text()
    forged = jwt.encode(
        {"iss": "outpost", "aud": sessions.LINK_AUDIENCE, "sub": "acme", "iat": 1, "exp": 2**40},
        "not-the-key-but-long-enough-for-hs256",
        algorithm="HS256",
    )
    async with http.get(relay.make_url("/portal"), params={"token": forged}) as resp:
        assert resp.status == 401
    # A link dies with its tenant.
    link = await portal_link(relay, "acme")
    await api(http, relay, "DELETE", "/tenants/acme")
    async with http.get(link) as resp:
        assert resp.status == 401
    # No session: no page.
    async with http.get(relay.make_url("/portal/destinations")) as resp:
        assert resp.status == 401


async def test_a_link_opens_one_session_only(
    relay: Any, http: aiohttp.ClientSession, receiver: Any, db: Any
) -> None:
    """A link that leaked after its user opened it (history, a proxy's log, a forwarded
    mail) opens nothing; a HEAD (a link checker) does not spend it."""
    await tenant_with_destination(http, relay, "acme", receiver.url("/acme"), "acme-hook")
    link = await portal_link(relay, "acme")
    async with http.head(link, allow_redirects=False) as resp:
        assert resp.status == 303 and sessions.PORTAL_COOKIE not in resp.cookies
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as first:
        async with first.get(link) as resp:
            assert resp.status == 200 and "acme-hook" in await resp.text()
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as second:
        async with second.get(link, allow_redirects=False) as resp:
            assert resp.status == 401 and "opened already" in await resp.text()
            assert sessions.PORTAL_COOKIE not in resp.cookies
    assert await db.fetchval("SELECT count(*) FROM relay.portal_links_used") == 1
    # Each link its own: a fresh one opens.
    async with http.get(await portal_link(relay, "acme"), allow_redirects=False) as resp:
        assert resp.status == 303
    # Used links are forgotten once they would have expired anyway.
    await db.execute("UPDATE relay.portal_links_used SET expires_at = now() - interval '1 s'")
    async with http.get(await portal_link(relay, "acme"), allow_redirects=False) as resp:
        assert resp.status == 303
    assert await db.fetchval("SELECT count(*) FROM relay.portal_links_used") == 1
    # A link without an id (as relay issued them before) is refused.
    settings = make_settings("postgresql://unused/x")
    created = await db.fetchval("SELECT created_at FROM relay.tenants WHERE id = 'acme'")
    claims = jwt.decode(
        sessions.issue_link_token(settings, "acme", created),
        options={"verify_signature": False},
    )
    key = sessions._key(settings, b"link")
    fresh = jwt.encode(claims, key, algorithm="HS256")
    async with http.get(
        relay.make_url("/portal"), params={"token": fresh}, allow_redirects=False
    ) as resp:
        assert resp.status == 303  # signed alike, with its id: opens
    del claims["jti"]
    old = jwt.encode(claims, key, algorithm="HS256")
    async with http.get(relay.make_url("/portal"), params={"token": old}) as resp:
        assert resp.status == 401


async def test_a_session_reaches_nothing_of_another_tenant(
    relay: Any, http: aiohttp.ClientSession, receiver: Any, db: Any
) -> None:
    await tenant_with_destination(http, relay, "acme", receiver.url("/acme"), "acme-hook")
    await tenant_with_destination(http, relay, "other", receiver.url("/other"), "other-hook")
    _, theirs = await post_publish(
        http, relay, {"tenant_id": "other", "topic": "order.created", "data": {"secret": "x"}}
    )
    await wait_attempts(db, 1)
    their_attempt = await db.fetchval("SELECT id FROM relay.attempts")
    client = await browser_session(relay, "acme")
    async with client:
        async with client.get(relay.make_url("/portal/destinations")) as resp:
            page = await resp.text()
            assert "acme-hook" in page and "other-hook" not in page
        csrf = csrf_of(page)
        for path in (
            "/portal/destinations/other-hook",
            "/portal/destinations/other-hook/edit",
            f"/portal/events/{theirs['id']}",
            f"/portal/attempts/{their_attempt}",
        ):
            async with client.get(relay.make_url(path)) as resp:
                assert resp.status == 404, path
                assert "other.example" not in await resp.text()
        async with client.get(relay.make_url("/portal/events")) as resp:
            assert theirs["id"] not in await resp.text()
        # Searching by id finds only the session's tenant's events.
        async with client.get(
            relay.make_url("/portal/events"), params={"id": theirs["id"]}
        ) as resp:
            assert "No events." in await resp.text()
        async with client.get(relay.make_url("/portal/attempts")) as resp:
            assert "other-hook" not in await resp.text()
        async with client.get(
            relay.make_url("/portal/events"), params={"destination_id": "other-hook"}
        ) as resp:
            assert theirs["id"] not in await resp.text()
        for path, data in (
            ("/portal/destinations/other-hook/disable", {}),
            ("/portal/destinations/other-hook/delete", {}),
            ("/portal/destinations/other-hook/reveal", {}),
            ("/portal/retry", {"event_id": theirs["id"], "destination_id": "other-hook"}),
        ):
            async with client.post(relay.make_url(path), data={"csrf": csrf, **data}) as resp:
                assert resp.status == 404, (path, resp.status)
    row = await db.fetchrow(
        "SELECT disabled_at, deleted_at FROM relay.destinations WHERE id = 'other-hook'"
    )
    assert row["disabled_at"] is None and row["deleted_at"] is None
    assert await db.fetchval("SELECT count(*) FROM relay.attempts") == 1


async def test_csrf_and_expiry(relay: Any, http: aiohttp.ClientSession, receiver: Any) -> None:
    await tenant_with_destination(http, relay, "acme", receiver.url("/acme"), "acme-hook")
    client = await browser_session(relay, "acme")
    async with client:
        async with client.get(relay.make_url("/portal/destinations/acme-hook")) as resp:
            csrf = csrf_of(await resp.text())
        disable = relay.make_url("/portal/destinations/acme-hook/disable")
        async with client.post(disable, data={}) as resp:
            assert resp.status == 403 and "CSRF" in await resp.text()
        async with client.post(disable, data={"csrf": "0" * 64}) as resp:
            assert resp.status == 403
        async with client.post(
            disable, data={"csrf": csrf}, headers={"Origin": "https://evil.example"}
        ) as resp:
            assert resp.status == 403
        async with client.post(disable, data={"csrf": csrf}) as resp:
            assert resp.status == 200 and "Destination disabled." in await resp.text()
        async with http.get(
            relay.make_url("/api/v1/tenants/acme/destinations/acme-hook"), headers=admin_headers()
        ) as resp:
            assert (await resp.json())["disabled_at"] is not None
    # An expired session cookie is refused.
    settings = make_settings("postgresql://unused/x")
    key = sessions._key(settings, b"session")
    stale = jwt.encode(
        {
            "iss": "outpost",
            "aud": sessions.PORTAL_AUDIENCE,
            "sub": "acme",
            "iat": 1,
            "exp": int(time.time()) - 5,
            "nonce": "n",
        },
        key,
        algorithm="HS256",
    )
    async with http.get(
        relay.make_url("/portal/destinations"), cookies={sessions.PORTAL_COOKIE: stale}
    ) as resp:
        assert resp.status == 401 and "expired" in await resp.text()


async def test_producer_and_receiver_content_is_text(
    relay: Any, http: aiohttp.ClientSession, receiver: Any, db: Any
) -> None:
    receiver.reply = lambda n, path: Reply(
        status=500, body=IMG + SCRIPT, headers={"x-evil": SCRIPT}
    )
    await tenant_with_destination(http, relay, "acme", receiver.url("/acme"), "acme-hook")
    _, published = await post_publish(
        http,
        relay,
        {
            "tenant_id": "acme",
            "id": "evt-" + "x",
            "topic": "order.created",
            "data": {"html": SCRIPT, "img": IMG},
            "metadata": {"note": SCRIPT},
        },
    )
    await wait_attempts(db, 1)
    attempt = await db.fetchval("SELECT min(id) FROM relay.attempts")
    client = await browser_session(relay, "acme")
    async with client:
        for path in (f"/portal/events/{published['id']}", f"/portal/attempts/{attempt}"):
            async with client.get(relay.make_url(path)) as resp:
                page = await resp.text()
                assert resp.status == 200
                assert "<script>alert" not in page and "<img src=x" not in page
                assert "&lt;script&gt;alert(" in page
        assert "&lt;img src=x onerror=" in page


async def test_destination_forms_name_the_field(
    relay: Any, http: aiohttp.ClientSession, receiver: Any
) -> None:
    await api(http, relay, "PUT", "/tenants/acme")
    client = await browser_session(relay, "acme")
    async with client:
        async with client.get(relay.make_url("/portal/destinations/new")) as resp:
            page = await resp.text()
            assert "order.created" in page  # the catalogue, as checkboxes
            csrf = csrf_of(page)
        create = relay.make_url("/portal/destinations")
        cases = [
            ({"url": "ftp://x"}, "config.url"),
            ({"url": receiver.url("/a"), "filter": "{nope"}, "filter is not valid JSON"),
            ({"url": receiver.url("/a"), "filter": '{"a": {"$near": 1}}'}, "$near"),
            ({"url": receiver.url("/a"), "custom_headers": "[1]"}, "config.custom_headers"),
            ({"url": receiver.url("/a"), "topic": "nope.topic"}, "topics[0]"),
            ({"url": receiver.url("/a"), "webhook_mode": "xml"}, "config.webhook_mode"),
        ]
        for fields, named in cases:
            data = {"csrf": csrf, "all_topics": "on", **fields}
            if "topic" in fields:
                data.pop("all_topics")
            async with client.post(create, data=data) as resp:
                text = await resp.text()
                assert resp.status == 422, (fields, resp.status)
                assert named in text.replace("&#39;", "'").replace("&#34;", '"'), (fields, named)
        async with client.post(
            create,
            data={"csrf": csrf, "url": receiver.url("/a"), "topic": "order.created", "id": "d1"},
        ) as resp:
            assert resp.status == 200 and "Destination created." in await resp.text()
        for path in ("/portal/attempts?status=bogus", "/portal/events?cursor=garbage"):
            async with client.get(relay.make_url(path)) as resp:
                assert resp.status == 400, path
        check = relay.make_url("/portal/filter-check")
        headers = {sessions.CSRF_HEADER: csrf}
        for body, expected in (
            (
                {"filter": '{"data": {"n": {"$gte": 2}}}', "sample": '{"data": {"n": 3}}'},
                {"valid": True, "matches": True},
            ),
            (
                {"filter": '{"data": {"n": {"$gte": 2}}}', "sample": '{"data": {"n": 1}}'},
                {"valid": True, "matches": False},
            ),
            ({"filter": '{"data": {"$near": 1}}', "sample": "{}"}, {"valid": False}),
        ):
            async with client.post(check, json=body, headers=headers) as resp:
                answer = await resp.json()
                assert {k: answer[k] for k in expected} == expected
        async with client.post(check, data=b"[", headers=headers) as resp:
            assert resp.status == 400


async def test_reveal_rotate_retry_delete(
    relay: Any, http: aiohttp.ClientSession, receiver: Any, db: Any
) -> None:
    await tenant_with_destination(http, relay, "acme", receiver.url("/acme"), "acme-hook")
    secret = (await api(http, relay, "GET", "/tenants/acme/destinations/acme-hook"))["credentials"][
        "secret"
    ]
    client = await browser_session(relay, "acme")
    async with client:
        async with client.get(relay.make_url("/portal/destinations/acme-hook")) as resp:
            page = await resp.text()
            assert secret not in page
            csrf = csrf_of(page)
        base = "/portal/destinations/acme-hook"
        async with client.post(relay.make_url(base + "/reveal"), data={"csrf": csrf}) as resp:
            assert secret in await resp.text()
        async with client.post(relay.make_url(base + "/rotate"), data={"csrf": csrf}) as resp:
            assert "Secret rotated" in await resp.text()
        rotated = await api(http, relay, "GET", "/tenants/acme/destinations/acme-hook")
        assert rotated["credentials"]["previous_secret"] == secret
        _, published = await post_publish(
            http, relay, {"tenant_id": "acme", "topic": "order.created", "data": {"n": 1}}
        )
        await wait_attempts(db, 1)
        async with client.post(
            relay.make_url("/portal/retry"),
            data={"csrf": csrf, "event_id": published["id"], "destination_id": "acme-hook"},
        ) as resp:
            assert resp.status == 200 and "Retry queued" in await resp.text()
        rows = await wait_attempts(db, 2)
        assert [r["number"] for r in rows] == [1, 2] and rows[1]["manual"]
        async with client.post(
            relay.make_url("/portal/retry"),
            data={"csrf": csrf, "event_id": "", "destination_id": "acme-hook"},
        ) as resp:
            assert resp.status == 422 and "event_id" in await resp.text()
        async with client.post(relay.make_url(base + "/delete"), data={"csrf": csrf}) as resp:
            assert "Destination deleted." in await resp.text()
    assert await db.fetchval(
        "SELECT deleted_at IS NOT NULL FROM relay.destinations WHERE id = 'acme-hook'"
    )


async def test_edit_keeps_what_the_form_does_not_change(
    relay: Any, http: aiohttp.ClientSession, receiver: Any
) -> None:
    await api(http, relay, "PUT", "/tenants/acme")
    await api(
        http,
        relay,
        "POST",
        "/tenants/acme/destinations",
        json={
            "id": "hook",
            "type": "webhook",
            "topics": ["order.created"],
            "filter": {"data": {"n": 1}},
            "config": {"url": receiver.url("/a"), "custom_headers": '{"x-k": "v"}'},
            "metadata": {"team": "ops"},
        },
    )
    client = await browser_session(relay, "acme")
    async with client:
        async with client.get(relay.make_url("/portal/destinations/hook/edit")) as resp:
            page = await resp.text()
            # Prefilled with what is stored.
            assert (
                receiver.url("/a") in page
                and "x-k" in page
                and "checked> order.created"
                in (page.replace('value="order.created" checked', "checked"))
            )
            csrf = csrf_of(page)
        edit = relay.make_url("/portal/destinations/hook/edit")
        async with client.post(
            edit, data={"csrf": csrf, "url": "not a url", "topic": "order.created"}
        ) as resp:
            assert resp.status == 422 and "config.url" in await resp.text()
        async with client.post(
            edit,
            data={
                "csrf": csrf,
                "url": receiver.url("/b"),
                "topic": "user.deleted",
                "filter": "",
                "custom_headers": '{"x-k": "w"}',
            },
        ) as resp:
            assert resp.status == 200 and "Changes saved." in await resp.text()
    stored = await api(http, relay, "GET", "/tenants/acme/destinations/hook")
    assert stored["config"]["url"] == receiver.url("/b")
    assert stored["topics"] == ["user.deleted"] and stored["filter"] is None
    assert stored["config"]["custom_headers"] == '{"x-k":"w"}'
    assert stored["metadata"] == {"team": "ops"}  # not on the form: left alone


async def test_attempt_shows_the_request_headers_without_signature(
    relay: Any, http: aiohttp.ClientSession, receiver: Any, db: Any
) -> None:
    await api(http, relay, "PUT", "/tenants/acme")
    created = await api(
        http,
        relay,
        "POST",
        "/tenants/acme/destinations",
        json={
            "id": "hook",
            "type": "webhook",
            "topics": "*",
            "config": {"url": receiver.url("/a"), "custom_headers": '{"x-team": "ops"}'},
        },
    )
    secret = created["credentials"]["secret"]
    _, published = await post_publish(
        http,
        relay,
        {"tenant_id": "acme", "topic": "order.created", "data": {"n": 1}, "metadata": {"k": "v"}},
    )
    (request,) = await receiver.wait_for(1)
    await wait_attempts(db, 1)
    attempt = await db.fetchval("SELECT id FROM relay.attempts")
    client = await browser_session(relay, "acme")
    async with client:
        async with client.get(relay.make_url(f"/portal/attempts/{attempt}")) as resp:
            page = await resp.text()
    table = page[page.index('id="request-headers"') : page.index('id="response-headers"')]
    # What the receiver got, header for header, but the signature.
    for name in ("webhook-id", "webhook-topic", "x-team", "content-type", "k"):
        assert f">{name}</th><td>{request.headers[name]}</td>" in table, name
    assert ">webhook-timestamp</th>" in table  # its second: the attempt's start
    assert request.headers["webhook-id"] == published["id"]
    assert "webhook-signature</th><td>(signed with the destination&#39;s secret)" in table
    assert request.headers["webhook-signature"] not in page and secret not in page


async def test_bad_input_is_a_4xx_naming_it_never_a_500(
    relay: Any, http: aiohttp.ClientSession, receiver: Any
) -> None:
    await tenant_with_destination(http, relay, "acme", receiver.url("/acme"), "acme-hook")
    client = await browser_session(relay, "acme")
    async with client:
        async with client.get(relay.make_url("/portal/destinations")) as resp:
            csrf = csrf_of(await resp.text())
        for path in (
            "/portal/events?topic=%00",
            "/portal/events?destination_id=%00",
            "/portal/events/a%00b",
            "/portal/attempts?destination_id=%00",
            "/portal/attempts/99999999999999999999",
            "/portal/destinations/%00/edit",
            "/portal/metrics?destination_id=%00",
            "/portal/metrics?hours=abc",
            "/portal/events?cursor=%00",
        ):
            async with client.get(relay.make_url(path)) as resp:
                assert 400 <= resp.status < 500, (path, resp.status)
        async with client.get(relay.make_url("/portal/events?topic=%00")) as resp:
            assert "topic must not contain NUL" in await resp.text()
        for path, data in (
            ("/portal/destinations", {"url": "http://127.0.0.1/\x00", "all_topics": "on"}),
            ("/portal/destinations", {"url": "http://127.0.0.1/", "filter": '{"a": "\\u0000"}'}),
            ("/portal/retry", {"event_id": "\x00", "destination_id": "x"}),
            ("/portal/destinations/acme-hook/disable", {"note": "\x00"}),
        ):
            async with client.post(relay.make_url(path), data={"csrf": csrf, **data}) as resp:
                assert 400 <= resp.status < 500, (path, data, resp.status)
    from tests.integration.test_console import signed_in

    console, _, page = await signed_in(relay)
    async with console:
        csrf = csrf_of(page)
        for path in (
            "/console/events?id=%00",
            "/console/tenants/%00",
            "/console/tenants?after_id=x&after_time=nope",
            "/console/attempts.json?tenant_id=%00",
            "/console/attempts.json?after=99999999999999999999",
        ):
            async with console.get(relay.make_url(path)) as resp:
                assert 400 <= resp.status < 500, (path, resp.status)
        for data in ({"tenant_id": "\x00"}, {"since": "9999-99-99"}, {"until": "+275760-01-01"}):
            async with console.post(
                relay.make_url("/console/replay"), data={"csrf": csrf, **data}
            ) as resp:
                assert 400 <= resp.status < 500, (data, resp.status)
