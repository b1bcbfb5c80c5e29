"""A real browser for the portal and console tests: Playwright driving Debian's Chromium.

Playwright's own browser download cannot be reached from everywhere relay is built, so
the tests use the system's Chromium (``RELAY_CHROMIUM``, else ``chromium`` on PATH) and
skip, saying how to install it, when there is none.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from typing import Any

import pytest

INSTALL = (
    "no Chromium for the browser tests: install it (Debian/Ubuntu: "
    "`apt-get install -y chromium`) or set RELAY_CHROMIUM to its path"
)


def chromium_path() -> str | None:
    given = os.environ.get("RELAY_CHROMIUM")
    if given:
        return given if os.path.exists(given) else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    path = chromium_path()
    if path is None:
        pytest.skip(INSTALL)
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            await chromium.close()


class Watch:
    """What a page did that it must not: dialogs (alert), uncaught errors, CSP reports."""

    def __init__(self, page: Any) -> None:
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.console_errors: list[str] = []
        page.on("dialog", self._dialog)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page.on(
            "console",
            lambda msg: self.console_errors.append(msg.text) if msg.type == "error" else None,
        )

    async def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        await dialog.dismiss()


@pytest.fixture
async def page(browser: Any) -> AsyncIterator[Any]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(10_000)
    try:
        yield page
    finally:
        await context.close()


@pytest.fixture
def watch(page: Any) -> Watch:
    return Watch(page)
