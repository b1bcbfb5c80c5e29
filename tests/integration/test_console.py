"""The operator console over HTTP: the admin key gate, the overview, an event's story,
replay (dry run, then the replay and its progress) and the live attempts feed."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import aiohttp
import pytest

from relay.web import sessions
from tests.integration.test_portal import SCRIPT, tenant_with_destination, wait_attempts
from tests.support.receiver import Reply
from tests.support.relay import ADMIN_KEY, make_settings, post_publish


@pytest.fixture
async def relay(start_relay: Any, database_url: str) -> Any:
    return await start_relay(make_settings(database_url))


async def signed_in(relay: Any, key: str = ADMIN_KEY) -> tuple[aiohttp.ClientSession, int, str]:
    client = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with client.get(relay.make_url("/console/login")) as resp:
        nonce = re.search(r'name="login_nonce" value="([^"]+)"', await resp.text())
    assert nonce
    async with client.post(
        relay.make_url("/console/login"), data={"login_nonce": nonce.group(1), "admin_key": key}
    ) as resp:
        return client, resp.status, await resp.text()


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf-token" content="([^"]+)"', page)
    assert match
    return match.group(1)


async def test_the_console_needs_the_admin_key(relay: Any, http: aiohttp.ClientSession) -> None:
    async with http.get(relay.make_url("/console/"), allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/console/login"
    async with http.get(relay.make_url("/"), allow_redirects=False) as resp:
        assert resp.headers["Location"] == "/console/"
    async with http.get(relay.make_url("/console/attempts.json")) as resp:
        assert resp.status == 401
    client, status, page = await signed_in(relay, "wrong-key")
    async with client:
        assert status == 401 and "admin_key" in page
        async with client.get(relay.make_url("/console/"), allow_redirects=False) as resp:
            assert resp.status == 303
    # The sign-in form's nonce must come with the browser's cookie (login CSRF).
    async with http.post(
        relay.make_url("/console/login"), data={"login_nonce": "x", "admin_key": ADMIN_KEY}
    ) as resp:
        assert resp.status == 403
    client, status, page = await signed_in(relay)
    async with client:
        assert status == 200 and "Backlog" in page
        async with client.post(relay.make_url("/console/logout"), data={}) as resp:
            assert resp.status == 403  # no CSRF token
        async with client.post(
            relay.make_url("/console/logout"), data={"csrf": csrf_of(page)}
        ) as resp:
            assert "Admin API key" in await resp.text()
    # A portal session is no console session.
    async with http.get(
        relay.make_url("/console/"),
        cookies={sessions.CONSOLE_COOKIE: "not-a-session"},
        allow_redirects=False,
    ) as resp:
        assert resp.status == 303


async def test_overview_story_replay_and_feed(
    relay: Any, http: aiohttp.ClientSession, receiver: Any, db: Any
) -> None:
    failing = True
    receiver.reply = lambda n, path: Reply(status=500 if failing else 200, body=SCRIPT)
    await tenant_with_destination(http, relay, "acme", receiver.url("/acme"), "acme-hook")
    ids = []
    for n in range(3):
        _, published = await post_publish(
            http, relay, {"tenant_id": "acme", "topic": "t", "data": {"n": n, "x": SCRIPT}}
        )
        ids.append(published["id"])
    # Two retries each (the test schedule), then failed.
    deadline = time.monotonic() + 15
    while await db.fetchval("SELECT count(*) FROM relay.deliveries WHERE status = 'failed'") < 3:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    failing = False
    client, _, page = await signed_in(relay)
    async with client:
        assert "acme-hook" in page and "failing" in page  # failing destinations
        assert "<script>alert" not in page
        csrf = csrf_of(page)
        async with client.get(relay.make_url("/console/events"), params={"id": ids[0]}) as resp:
            story = await resp.text()
            assert "Deliveries" in story and "failed" in story and "500" in story
            assert "<script>alert" not in story and "&lt;script&gt;" in story
        async with client.get(relay.make_url("/console/events"), params={"id": "nope"}) as resp:
            assert "No event nope" in await resp.text()
        last = await db.fetchval("SELECT max(id) FROM relay.attempts")
        replay = relay.make_url("/console/replay")
        async with client.post(
            replay, data={"csrf": csrf, "since": "yesterday", "status": "failed"}
        ) as resp:
            assert resp.status == 400 and "since must be a time" in await resp.text()
        async with client.post(replay, data={"csrf": csrf, "status": "exploded"}) as resp:
            assert resp.status == 400 and "status must be one of" in await resp.text()
        async with client.post(
            replay,
            data={"csrf": csrf, "tenant_id": "acme", "status": "failed", "action": "dry-run"},
        ) as resp:
            assert re.search(r"<strong>3</strong> deliveries would be replayed", await resp.text())
        assert await db.fetchval("SELECT max(id) FROM relay.attempts") == last
        async with client.post(
            replay,
            data={"csrf": csrf, "tenant_id": "acme", "status": "failed", "action": "replay"},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 303
            job = resp.headers["Location"]
        deadline = time.monotonic() + 10
        while True:
            async with client.get(relay.make_url(job + ".json")) as resp:
                progress = await resp.json()
            if progress["finished"]:
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert progress["done"] == 3 and progress["total"] == 3 and progress["error"] is None
        rows = await wait_attempts(db, int(last) + 3)
        new = [r for r in rows if r["id"] > last]
        assert len(new) == 3 and all(r["manual"] and r["status"] == "success" for r in new)
        async with client.get(
            relay.make_url("/console/attempts.json"), params={"after": str(last)}
        ) as resp:
            feed = await resp.json()
        assert [a["id"] for a in feed] == [r["id"] for r in new]
        assert all(a["code"] == "200" and a["manual"] for a in feed)
        async with client.get(
            relay.make_url("/console/attempts.json"), params={"after": "-1"}
        ) as resp:
            assert resp.status == 400 and "after" in (await resp.json())["message"]
        async with client.get(relay.make_url(job)) as resp:
            assert "Replayed 3 of 3" in await resp.text()
        # Delivered ones can be replayed too (the CLI's --status delivered).
        deadline = time.monotonic() + 10
        while (
            await db.fetchval("SELECT count(*) FROM relay.deliveries WHERE status = 'delivered'")
            < 3
        ):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        async with client.post(
            replay,
            data={"csrf": csrf, "tenant_id": "acme", "status": "delivered", "action": "dry-run"},
        ) as resp:
            assert re.search(r"<strong>3</strong> deliveries would be replayed", await resp.text())
        async with client.get(relay.make_url("/console/tenants/acme")) as resp:
            assert "acme-hook" in await resp.text()
        async with client.get(relay.make_url("/console/tenants/ghost")) as resp:
            assert resp.status == 404
        async with client.get(relay.make_url("/console/tenants")) as resp:
            assert "acme" in await resp.text()
        # The console opens a tenant's portal (a fresh link, used at once).
        async with client.post(
            relay.make_url("/console/tenants/acme/portal"), data={"csrf": csrf}
        ) as resp:
            assert str(resp.url).endswith("/portal/destinations")
            assert "acme-hook" in await resp.text()


async def test_a_replays_progress_shows_in_every_relay_process(
    start_relay: Any, database_url: str, http: aiohttp.ClientSession, receiver: Any, db: Any
) -> None:
    """With server.workers > 1 the progress page is answered by whichever process takes
    the request: a replay's progress is in relay.replay_jobs, not in the process that
    runs it."""
    settings = make_settings(database_url)
    first = await start_relay(settings)
    second = await start_relay(settings, dispatcher=False)
    receiver.reply = lambda n, path: Reply(status=500)
    await tenant_with_destination(http, first, "acme", receiver.url("/acme"), "acme-hook")
    for n in range(4):
        await post_publish(http, first, {"tenant_id": "acme", "topic": "t", "data": {"n": n}})
    deadline = time.monotonic() + 15
    while await db.fetchval("SELECT count(*) FROM relay.deliveries WHERE status = 'failed'") < 4:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    client, _, page = await signed_in(first)
    async with client:
        async with client.post(
            first.make_url("/console/replay"),
            data={"csrf": csrf_of(page), "status": "failed", "action": "replay"},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 303
            job = resp.headers["Location"]
        deadline = time.monotonic() + 10
        while True:
            # The other process: the session is signed, the progress is in the database.
            async with client.get(second.make_url(job + ".json")) as resp:
                assert resp.status == 200
                progress = await resp.json()
            if progress["finished"]:
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        assert progress["done"] == 4 and progress["total"] == 4 and progress["error"] is None
        assert not progress["stalled"]
        async with client.get(second.make_url(job)) as resp:
            assert "Replayed 4 of 4" in await resp.text()
        row = await db.fetchrow(
            "SELECT done, total, finished_at, error, selection FROM relay.replay_jobs"
        )
        assert (row["done"], row["total"], row["error"]) == (4, 4, None)
        assert row["finished_at"] is not None

        # A replay whose process died without a word: no progress for five minutes.
        await db.execute(
            """INSERT INTO relay.replay_jobs
                   (id, selection, total, done, after_attempt, started_at, updated_at)
               VALUES ('00ff00ff00ff00ff', $1, 10, 4, 0, now() - interval '6 minutes',
                       now() - interval '5 minutes')""",
            row["selection"],
        )
        async with client.get(second.make_url("/console/replay/00ff00ff00ff00ff.json")) as resp:
            stalled = await resp.json()
        assert stalled["stalled"] and not stalled["finished"] and stalled["done"] == 4
        assert "no progress since" in stalled["error"]
        async with client.get(first.make_url("/console/replay/00ff00ff00ff00ff")) as resp:
            text = await resp.text()
            assert "Replaying: 4 of 10" in text and "the relay process running it stopped" in text
        async with client.get(second.make_url("/console/replay/0123456789abcdef.json")) as resp:
            assert resp.status == 404 and "no such replay" in (await resp.json())["message"]
