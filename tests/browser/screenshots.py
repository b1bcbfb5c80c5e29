"""Regenerate docs/screenshots/: each main page of the portal and the console at 1280 and
390 pixels wide, from a live relay with a little traffic (some of it failing).

    .venv/bin/python -m tests.browser.screenshots [--out docs/screenshots]

PostgreSQL: ``RELAY_TEST_DATABASE_URL`` (a scratch database is created next to it and
dropped after), else a throwaway embedded server. Chromium: as the browser tests find it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp.test_utils import TestServer
from sqlalchemy.engine import make_url

from relay.app import create_app
from relay.db.engine import asyncpg_url
from tests.browser.conftest import INSTALL, chromium_path
from tests.support.receiver import Receiver, Reply
from tests.support.relay import ADMIN_KEY, admin_headers, make_settings

WIDTHS = (1280, 390)
ROOT = Path(__file__).resolve().parents[2]


async def seed(http: aiohttp.ClientSession, base: str, receiver: Receiver) -> dict[str, str]:
    async def call(method: str, path: str, **kw: Any) -> Any:
        async with http.request(
            method, base + "/api/v1" + path, headers=admin_headers(), **kw
        ) as r:
            assert r.status < 300, (path, r.status, await r.text())
            return await r.json()

    # The billing receiver fails every third request; legacy is disabled.
    receiver.reply = lambda n, path: (
        Reply(status=500, body='{"error": "database is locked"}')
        if path == "/billing" and n % 3 == 0
        else Reply(body='{"ok": true}', headers={"content-type": "application/json"})
    )
    for tenant in ("acme", "globex", "initech"):
        await call("PUT", f"/tenants/{tenant}", json={"metadata": {"plan": "pro"}})
    destinations = [
        ("orders", ["order.created", "order.paid"], "/orders", None),
        ("billing", ["order.paid"], "/billing", {"data": {"amount": {"$gte": 100}}}),
        ("legacy", "*", "/legacy", None),
    ]
    for dest_id, topics, path, rule in destinations:
        await call(
            "POST",
            "/tenants/acme/destinations",
            json={
                "id": dest_id,
                "type": "webhook",
                "topics": topics,
                "filter": rule,
                "config": {"url": receiver.url(path)},
            },
        )
    await call("PUT", "/tenants/acme/destinations/legacy/disable")
    await call(
        "POST",
        "/tenants/globex/destinations",
        json={
            "id": "crm",
            "type": "webhook",
            "topics": "*",
            "config": {"url": receiver.url("/crm")},
        },
    )
    first = ""
    for n in range(24):
        topic = ("order.created", "order.paid")[n % 2]
        answer = await call(
            "POST",
            "/publish",
            json={
                "tenant_id": "acme",
                "topic": topic,
                "data": {"order_id": f"o-{1000 + n}", "amount": 40 + 15 * n},
            },
        )
        first = first or answer["id"]
    await call(
        "POST",
        "/publish",
        json={"tenant_id": "globex", "topic": "order.created", "data": {"id": 1}},
    )
    await asyncio.sleep(3)  # retries on the test schedule (0.2 s, 0.4 s) run out
    return {"event": first}


async def shoot(url: str, out: Path, chromium: str) -> None:
    from playwright.async_api import async_playwright

    async with aiohttp.ClientSession() as http, Receiver() as receiver:
        ids = await seed(http, url, receiver)
        async with http.get(url + "/api/v1/tenants/acme/portal", headers=admin_headers()) as r:
            link = (await r.json())["redirect_url"]
        async with http.get(
            url + "/api/v1/attempts?tenant_id=acme&status=failed&limit=1", headers=admin_headers()
        ) as r:
            failed = (await r.json())["models"][0]["id"]
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            for width in WIDTHS:
                context = await browser.new_context(
                    viewport={"width": width, "height": 900}, device_scale_factor=1
                )
                page = await context.new_page()
                await page.goto(link)
                portal = [
                    ("portal-destinations", "/portal/destinations"),
                    ("portal-destination", "/portal/destinations/billing"),
                    ("portal-new-destination", "/portal/destinations/new"),
                    ("portal-events", "/portal/events"),
                    ("portal-attempt", f"/portal/attempts/{failed}"),
                    ("portal-metrics", "/portal/metrics"),
                ]
                for name, path in portal:
                    await page.goto(url + path)
                    await page.screenshot(path=out / f"{name}-{width}.png", full_page=True)
                await page.goto(url + "/console/login")
                await page.get_by_label("Admin API key").fill(ADMIN_KEY)
                await page.get_by_role("button", name="Sign in").click()
                await page.wait_for_url("**/console/")
                await page.screenshot(path=out / f"console-overview-{width}.png", full_page=True)
                await page.goto(url + f"/console/events?id={ids['event']}")
                await page.screenshot(path=out / f"console-event-{width}.png", full_page=True)
                await page.goto(url + "/console/replay")
                await page.get_by_label("Tenant").fill("acme")
                await page.get_by_role("button", name="Count (dry run)").click()
                await page.wait_for_selector("#dry-run-count")
                await page.screenshot(path=out / f"console-replay-{width}.png", full_page=True)
                await context.close()
            await browser.close()


async def main(out: Path) -> None:
    chromium = chromium_path()
    if chromium is None:
        sys.exit(INSTALL)
    out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (once, before anything runs)
    server_url = os.environ.get("RELAY_TEST_DATABASE_URL")
    embedded = None
    if not server_url:
        from relay.embedded import server_url as embedded_url
        from relay.embedded import start_server

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            embedded = start_server(Path(tempfile.mkdtemp()), cleanup_mode="delete")
        server_url = embedded_url(embedded, "postgres")
    name = f"relay_screens_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(asyncpg_url(server_url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    try:
        settings = make_settings(url, topics=["order.created", "order.paid", "user.deleted"])
        app = create_app(settings, url)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        try:
            started = time.monotonic()
            await shoot(str(server.make_url("")).rstrip("/"), out, chromium)
            print(
                f"wrote {len(WIDTHS) * 9} screenshots to {out} "
                f"in {time.monotonic() - started:.0f} s"
            )
        finally:
            await server.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
        if embedded is not None:
            embedded.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    asyncio.run(main(parser.parse_args().out))
