"""Shared fixtures: a real PostgreSQL, a database per test, real HTTP receivers.

PostgreSQL: ``RELAY_TEST_DATABASE_URL`` (any database on the server to use; the tests
create their own databases next to it), or else a throwaway embedded server started
the same way relay's zero-setup default starts one. Migrations run once into a template
database; each test gets ``CREATE DATABASE ... TEMPLATE`` (milliseconds).
"""

from __future__ import annotations

import asyncio
import os
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from tests.support.receiver import Receiver

TEMPLATE = f"relay_test_template_{os.getpid()}"


def _with_database(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A URL of some database on a PostgreSQL server the tests may create databases on."""
    given = os.environ.get("RELAY_TEST_DATABASE_URL")
    if given:
        yield given
        return
    from relay.embedded import server_url, start_server

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = start_server(tmp_path_factory.mktemp("embedded-pg"), cleanup_mode="delete")
    try:
        yield server_url(server, "postgres")
    finally:
        server.cleanup()


async def _admin(url: str) -> asyncpg.Connection:
    from relay.db.engine import asyncpg_url

    return await asyncpg.connect(asyncpg_url(url), timeout=10)


@pytest.fixture(scope="session")
def template_url(pg_server_url: str) -> Iterator[str]:
    from relay.db.engine import create_engine
    from relay.db.migrate import upgrade

    async def setup() -> None:
        conn = await _admin(pg_server_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{TEMPLATE}"')
        finally:
            await conn.close()
        engine = create_engine(_with_database(pg_server_url, TEMPLATE), pool_size=1)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    async def teardown() -> None:
        conn = await _admin(pg_server_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(setup())
    yield _with_database(pg_server_url, TEMPLATE)
    asyncio.run(teardown())


async def _slices_ahead(url: str) -> None:
    """The template's slices of history were made when the suite started; a test that
    writes without starting relay (which makes them) still finds one for its time."""
    from relay import retention
    from relay.config import RetentionSettings
    from relay.db.engine import create_engine

    engine = create_engine(url, pool_size=1)
    try:
        await retention.maintain(engine, RetentionSettings(), retire=False)
    finally:
        await engine.dispose()


@pytest.fixture
async def database_url(pg_server_url: str, template_url: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test."""
    name = f"relay_test_{uuid.uuid4().hex[:12]}"
    conn = await _admin(pg_server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"')
    finally:
        await conn.close()
    url = _with_database(pg_server_url, name)
    await _slices_ahead(url)
    yield url
    conn = await _admin(pg_server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the test's database, for looking at what relay wrote."""
    conn = await _admin(database_url)
    yield conn
    await conn.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver() as r:
        yield r


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def pytest_configure(config: Any) -> None:
    # The embedded server's helper asks platformdirs for XDG_RUNTIME_DIR.
    os.environ.setdefault("XDG_RUNTIME_DIR", "/tmp")


@pytest.fixture
async def start_relay(database_url: str) -> AsyncIterator[Any]:
    """``server = await start_relay(settings)``: a live relay (API + dispatcher) on a
    random port; ``server.make_url(path)`` addresses it. Stopped after the test."""
    from aiohttp.test_utils import TestServer

    from relay.app import create_app

    servers: list[TestServer] = []

    async def start(
        settings: Any, *, api: bool = True, dispatcher: bool = True, tracer: Any = None
    ) -> TestServer:
        app = create_app(
            settings, settings.database.url, api=api, dispatcher=dispatcher, tracer=tracer
        )
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        await server.close()


@pytest.fixture
async def http() -> AsyncIterator[Any]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        yield session
