"""The portal in Chromium: the SDK's link, a destination created through the portal, an
attempt with its response and a retry, and producer/receiver content that stays text."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from outpost_sdk import Outpost
from playwright.async_api import expect

from tests.browser.conftest import Watch
from tests.support.receiver import Reply
from tests.support.relay import ADMIN_KEY, admin_headers, make_settings, post_publish

SCRIPT = "<script>alert('xss-data')</script>"
IMG = "<img src=x onerror=alert('xss-img')>"


async def relay_with(start_relay: Any, database_url: str) -> Any:
    return await start_relay(make_settings(database_url, topics=["order.created", "user.deleted"]))


async def api(http: aiohttp.ClientSession, relay: Any, method: str, path: str, **kw: Any) -> Any:
    async with http.request(
        method, relay.make_url("/api/v1" + path), headers=admin_headers(), **kw
    ) as resp:
        assert resp.status < 300, (resp.status, await resp.text())
        return await resp.json()


async def portal_url(relay: Any, tenant: str) -> str:
    async with Outpost(api_key=ADMIN_KEY, server_url=str(relay.make_url("/api/v1"))) as sdk:
        answer = await sdk.tenants.get_portal_url_async(tenant_id=tenant)
    assert answer.redirect_url
    return answer.redirect_url


async def test_sdk_portal_url_shows_that_tenant_only(
    start_relay: Any, database_url: str, http: aiohttp.ClientSession, receiver: Any, page: Any
) -> None:
    relay = await relay_with(start_relay, database_url)
    for tenant in ("acme", "globex"):
        await api(http, relay, "PUT", f"/tenants/{tenant}")
        await api(
            http,
            relay,
            "POST",
            f"/tenants/{tenant}/destinations",
            json={
                "id": f"{tenant}-orders",
                "type": "webhook",
                "topics": ["order.created"],
                "config": {"url": receiver.url(f"/{tenant}")},
            },
        )
    mine = (
        await post_publish(
            http,
            relay,
            {"tenant_id": "acme", "id": "evt-acme-1", "topic": "order.created", "data": {"n": 1}},
        )
    )[1]
    theirs = (
        await post_publish(
            http,
            relay,
            {
                "tenant_id": "globex",
                "id": "evt-globex-1",
                "topic": "order.created",
                "data": {"n": 2},
            },
        )
    )[1]
    await receiver.wait_for(2)

    await page.goto(await portal_url(relay, "acme"))
    # The token was exchanged for a cookie and is gone from the address bar.
    assert page.url.endswith("/portal/destinations") and "token" not in page.url
    await expect(page.get_by_role("link", name="acme-orders")).to_be_visible()
    await expect(page.get_by_text("globex-orders")).to_have_count(0)
    cookies = await page.context.cookies()
    session = next(c for c in cookies if c["name"] == "relay_portal")
    assert session["httpOnly"] and session["sameSite"] == "Lax"
    assert await page.evaluate("document.cookie") == ""  # not readable by script

    await page.get_by_role("link", name="Events").click()
    await expect(page.get_by_role("link", name=mine["id"])).to_be_visible()
    await page.get_by_label("Event id").fill(mine["id"])
    await page.get_by_role("button", name="Filter").click()
    await expect(page.locator("table.events tbody tr")).to_have_count(1)
    await page.get_by_label("Event id").fill(theirs["id"])
    await page.get_by_role("button", name="Filter").click()
    await expect(page.locator("table.events")).to_contain_text("No events.")
    await expect(page.get_by_text(theirs["id"])).to_have_count(0)
    # Trying the other tenant's pages directly: not found, and nothing of theirs shown.
    for path in ("/portal/destinations/globex-orders", f"/portal/events/{theirs['id']}"):
        await page.goto(str(relay.make_url(path)))
        await expect(page.locator("h1")).to_contain_text("404")
        assert receiver.url("/globex") not in await page.content()
    await page.goto(str(relay.make_url("/portal/events?destination_id=globex-orders")))
    await expect(page.get_by_role("link", name=theirs["id"])).to_have_count(0)
    await expect(page.get_by_role("link", name=mine["id"])).to_have_count(0)
    await page.goto(str(relay.make_url("/portal/attempts")))
    await expect(page.locator("table.attempts tbody tr")).to_have_count(1)
    await expect(page.get_by_text("globex-orders")).to_have_count(0)


async def test_create_publish_see_response_retry(
    start_relay: Any,
    database_url: str,
    http: aiohttp.ClientSession,
    receiver: Any,
    page: Any,
    watch: Watch,
) -> None:
    relay = await relay_with(start_relay, database_url)
    receiver.reply = lambda n, path: Reply(status=200, body=f'{{"received": {n + 1}}}')
    await api(http, relay, "PUT", "/tenants/acme")
    await page.goto(await portal_url(relay, "acme"))
    await page.get_by_role("link", name="New destination").click()
    await page.get_by_label("Id").fill("orders-hook")
    await page.get_by_label("URL", exact=True).fill(receiver.url("/orders"))
    await page.get_by_label("Every topic (*)").uncheck()
    await page.get_by_label("order.created").check()
    # The live filter check, before saving.
    await page.get_by_label("Filter").fill('{"data": {"amount": {"$gte": 100}}}')
    await page.get_by_role("button", name="Check the filter").click()
    await expect(page.locator("#filter-result")).to_contain_text("Matches")
    await page.get_by_label("Sample event").fill(
        '{"topic": "order.created", "data": {"amount": 5}}'
    )
    await page.get_by_role("button", name="Check the filter").click()
    await expect(page.locator("#filter-result")).to_contain_text("Does not match")
    await page.get_by_role("button", name="Create destination").click()
    await expect(page.locator(".notice")).to_have_text("Destination created.")
    await expect(page.locator("h1")).to_have_text("Destination orders-hook")

    _, published = await post_publish(
        http,
        relay,
        {"tenant_id": "acme", "topic": "order.created", "data": {"amount": 150}},
    )
    await receiver.wait_for(1)
    await page.get_by_role("link", name="Attempts", exact=True).click()
    row = page.locator("table.attempts tbody tr").first
    for _ in range(50):
        if await page.locator("tr[data-attempt]").count():
            break
        await asyncio.sleep(0.1)
        await page.reload()
    await row.get_by_role("link").first.click()
    await expect(page.locator("#response-body")).to_have_text('{"received": 1}')
    await expect(page.locator("#http-status")).to_have_text("200")
    await page.get_by_role("button", name="Retry").click()
    await expect(page.locator(".notice")).to_contain_text("Retry queued")
    await receiver.wait_for(2)
    numbers = page.locator("table.attempts tbody tr td:nth-child(4)")
    for _ in range(50):
        if await numbers.count() >= 2:
            break
        await asyncio.sleep(0.1)
        await page.reload()
    await expect(numbers.first).to_contain_text("2")
    await expect(numbers.first).to_contain_text("manual")
    await numbers.first.locator("xpath=..").get_by_role("link").first.click()
    await expect(page.locator("h1")).to_contain_text(f"Attempt 2 of event {published['id']}")
    await expect(page.locator("#response-body")).to_have_text('{"received": 2}')
    assert watch.dialogs == [] and watch.errors == []


async def test_script_payloads_stay_text(
    start_relay: Any,
    database_url: str,
    http: aiohttp.ClientSession,
    receiver: Any,
    page: Any,
    watch: Watch,
) -> None:
    relay = await relay_with(start_relay, database_url)
    receiver.reply = lambda n, path: Reply(status=500, body=SCRIPT + IMG, headers={"x-reply": IMG})
    await api(http, relay, "PUT", "/tenants/acme", json={"metadata": {"name": SCRIPT}})
    await api(
        http,
        relay,
        "POST",
        "/tenants/acme/destinations",
        json={
            "id": "hook",
            "type": "webhook",
            "topics": "*",
            "config": {"url": receiver.url("/x?q=<script>alert('url')</script>")},
            "metadata": {"label": IMG},
        },
    )
    _, published = await post_publish(
        http,
        relay,
        {
            "tenant_id": "acme",
            "id": "evt-<b>bold</b>",
            "topic": "order.created",
            "data": {"html": SCRIPT, "img": IMG},
            "metadata": {"note": IMG},
        },
    )
    await receiver.wait_for(1)
    await page.goto(await portal_url(relay, "acme"))
    await page.wait_for_load_state("load")
    assert watch.dialogs == [], watch.dialogs  # checked first: the worst failure
    await expect(page.locator("td .url")).to_contain_text("<script>alert('url')</script>")
    await page.goto(str(relay.make_url("/portal/events")))
    await expect(page.get_by_role("link", name="evt-<b>bold</b>")).to_be_visible()
    await page.get_by_role("link", name="evt-<b>bold</b>").click()
    await expect(page.locator("pre.payload")).to_contain_text(SCRIPT)
    await expect(page.locator("pre.payload")).to_contain_text(IMG)
    await page.goto(str(relay.make_url("/portal/attempts")))
    for _ in range(50):
        if await page.locator("tr[data-attempt]").count():
            break
        await asyncio.sleep(0.1)
        await page.reload()
    await page.locator("tr[data-attempt] a").first.click()
    await expect(page.locator("#response-body")).to_have_text(SCRIPT + IMG)
    await expect(page.locator("#response-headers")).to_contain_text(IMG)
    await expect(page.locator("#request-body")).to_contain_text(SCRIPT)
    # Nothing ran: no dialog, no error, and no element was made from the payloads.
    assert await page.locator("main script, main img").count() == 0
    assert await page.evaluate("document.querySelectorAll('img').length") == 0
    assert watch.dialogs == [], watch.dialogs
    assert watch.errors == [], watch.errors
    # The same in the console's story of the event.
    await page.goto(str(relay.make_url("/console/login")))
    await page.get_by_label("Admin API key").fill(ADMIN_KEY)
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("link", name="Find an event").click()
    await page.get_by_label("Event id").fill(published["id"])
    await page.get_by_role("button", name="Find").click()
    await expect(page.locator("pre.payload")).to_contain_text(SCRIPT)
    await expect(page.locator("article.story")).to_contain_text("500")
    assert await page.evaluate("document.querySelectorAll('main img, main script').length") == 0
    assert watch.dialogs == [] and watch.errors == []


async def test_keyboard_reaches_and_works_every_action(
    start_relay: Any, database_url: str, http: aiohttp.ClientSession, receiver: Any, page: Any
) -> None:
    relay = await relay_with(start_relay, database_url)
    await api(http, relay, "PUT", "/tenants/acme")
    await api(
        http,
        relay,
        "POST",
        "/tenants/acme/destinations",
        json={
            "id": "hook",
            "type": "webhook",
            "topics": "*",
            "config": {"url": receiver.url("/a")},
        },
    )
    await page.goto(await portal_url(relay, "acme"))
    await page.keyboard.press("Tab")
    focused = "document.activeElement.textContent.trim()"
    assert await page.evaluate(focused) == "Skip to content"
    await page.keyboard.press("Enter")
    assert await page.evaluate("document.activeElement.id") == "main"
    # Into the destination by keyboard alone.
    for _ in range(10):
        await page.keyboard.press("Tab")
        if await page.evaluate(focused) == "hook":
            break
    await page.keyboard.press("Enter")
    await expect(page.locator("h1")).to_have_text("Destination hook")
    # Every action on the page is reachable with Tab, in order, and visibly focused.
    seen = []
    for _ in range(30):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement === document.body"):
            break  # past the last one
        seen.append(await page.evaluate(focused))
        outline = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline != "none", seen[-1]
    for action in ("Edit", "Reveal secret", "Disable", "Rotate secret", "Delete…"):
        assert action in seen, (action, seen)
    # And works: Disable, by keyboard.
    await page.get_by_role("button", name="Disable").focus()
    await page.keyboard.press("Enter")
    await expect(page.locator(".notice")).to_have_text("Destination disabled.")


async def test_portal_link_followed_from_another_site(
    start_relay: Any, database_url: str, http: aiohttp.ClientSession, receiver: Any, page: Any
) -> None:
    """The way users arrive: a link on the application's own site (another origin)."""
    relay = await relay_with(start_relay, database_url)
    await api(http, relay, "PUT", "/tenants/acme")
    await api(
        http,
        relay,
        "POST",
        "/tenants/acme/destinations",
        json={
            "id": "hook",
            "type": "webhook",
            "topics": "*",
            "config": {"url": receiver.url("/a")},
        },
    )
    link = await portal_url(relay, "acme")
    html = f'<!doctype html><a id="go" href="{link}">Webhooks</a>'
    receiver.reply = lambda n, path: Reply(body=html, headers={"Content-Type": "text/html"})
    # "localhost" and 127.0.0.1 are different sites to the browser.
    await page.goto(f"http://localhost:{receiver.port}/app")
    await page.click("#go")
    await expect(page.locator("h1")).to_have_text("Destinations")
    await expect(page.get_by_role("link", name="hook")).to_be_visible()
    assert "token" not in page.url
