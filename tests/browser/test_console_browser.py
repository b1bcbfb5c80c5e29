"""The operator console in Chromium: sign in with the admin key, count a replay (dry run),
replay, and watch the new attempts arrive on the page without reloading it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from playwright.async_api import expect

from tests.browser.conftest import Watch
from tests.support.receiver import Reply
from tests.support.relay import ADMIN_KEY, admin_headers, make_settings, post_publish


async def test_replay_dry_run_then_replay_then_new_attempts(
    start_relay: Any,
    database_url: str,
    http: aiohttp.ClientSession,
    receiver: Any,
    db: Any,
    page: Any,
    watch: Watch,
) -> None:
    relay = await start_relay(make_settings(database_url))
    failing = True
    # Replayed deliveries are answered after a second: their attempts are recorded after
    # the progress page has loaded, so only its polling can show them.
    receiver.reply = lambda n, path: Reply(status=503) if failing else Reply(delay=1.0)
    for tenant in ("acme", "globex"):
        async with http.put(
            relay.make_url(f"/api/v1/tenants/{tenant}"), headers=admin_headers()
        ) as resp:
            assert resp.status in (200, 201)
        async with http.post(
            relay.make_url(f"/api/v1/tenants/{tenant}/destinations"),
            headers=admin_headers(),
            json={
                "id": f"{tenant}-hook",
                "type": "webhook",
                "topics": "*",
                "config": {"url": receiver.url(f"/{tenant}")},
            },
        ) as resp:
            assert resp.status == 201
    for n in range(4):
        await post_publish(http, relay, {"tenant_id": "acme", "topic": "t", "data": {"n": n}})
    await post_publish(http, relay, {"tenant_id": "globex", "topic": "t", "data": {"n": 9}})
    deadline = time.monotonic() + 15
    while await db.fetchval("SELECT count(*) FROM relay.deliveries WHERE status = 'failed'") < 5:
        assert time.monotonic() < deadline, "deliveries did not fail in time"
        await asyncio.sleep(0.1)
    failing = False
    before = await db.fetchval("SELECT count(*) FROM relay.attempts")

    await page.goto(str(relay.make_url("/console/")))
    await expect(page).to_have_url(str(relay.make_url("/console/login")))
    await page.get_by_label("Admin API key").fill(ADMIN_KEY)
    await page.keyboard.press("Enter")
    await expect(page.locator("h1")).to_have_text("Overview")
    await expect(page.locator("#troubled")).to_contain_text("acme-hook")
    await page.get_by_role("link", name="Replay").click()
    await page.get_by_label("Tenant").fill("acme")
    await page.get_by_role("button", name="Count (dry run)").click()
    await expect(page.locator("#dry-run-count")).to_contain_text("4 deliveries would be replayed")
    # The dry run changed nothing.
    assert await db.fetchval("SELECT count(*) FROM relay.attempts") == before
    await page.get_by_role("button", name="Replay 4").click()
    await expect(page.locator("#replay-status")).to_have_text("Replayed 4 of 4 deliveries.")
    # The new attempts arrive on this page without a reload (it polls the feed).
    rows = page.locator("#live-attempts tbody tr")
    await expect(rows).to_have_count(4, timeout=15_000)
    await expect(page.locator("#live-attempts")).not_to_contain_text("globex")
    assert await page.locator("#live-attempts tbody tr.new").count() >= 1
    for i in range(4):
        await expect(rows.nth(i)).to_contain_text("success")
        await expect(rows.nth(i)).to_contain_text("manual")
    assert (
        await db.fetchval("SELECT count(*) FROM relay.attempts WHERE manual AND status = 'success'")
        == 4
    )
    assert watch.dialogs == [] and watch.errors == []
