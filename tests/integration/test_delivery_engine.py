"""The delivery engine against real receivers: retries, Retry-After, what counts as
success, timeouts, body caps, signatures, isolation, destination health and the SSRF guard.

Each test runs a live relay (API + dispatcher) on its own database and publishes through
the real HTTP API.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from relay.appkeys import DISPATCHER
from relay.config import load_settings
from relay.db.engine import create_engine
from relay.delivery.webhook import TRUNCATED_PLACEHOLDER
from relay.dispatcher import Dispatcher
from tests.support.receiver import Receiver, Reply
from tests.support.relay import admin_headers, make_settings

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OLD_SECRET = "whsec_" + base64.b64encode(b"the previous secret, 32 bytes!!!").decode()


def tenant(*destinations: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"id": "acme", "destinations": list(destinations)}]


def dest(id: str, url: str, **extra: Any) -> dict[str, Any]:
    return {"id": id, "url": url, "topics": "*", "secret": SECRET} | extra


async def publish(http: Any, server: Any, *, data: Any = None, **fields: Any) -> dict[str, Any]:
    body = {"tenant_id": "acme", "topic": "order.created", "data": data or {"n": 1}} | fields
    async with http.post(
        server.make_url("/api/v1/publish"), json=body, headers=admin_headers()
    ) as resp:
        assert resp.status == 202, await resp.text()
        result: dict[str, Any] = await resp.json()
        return result


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.05)


def disabled(db: Any, destination: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        row = await db.fetchrow(
            "SELECT disabled_at FROM relay.destinations WHERE id = $1", destination
        )
        return row["disabled_at"] is not None

    return check


def statuses(db: Any, destination: str | None = None) -> Callable[[], Awaitable[list[str]]]:
    async def fetch() -> list[str]:
        rows = await db.fetch(
            "SELECT status FROM relay.deliveries WHERE $1::text IS NULL OR destination_id = $1"
            " ORDER BY id",
            destination,
        )
        return [r["status"] for r in rows]

    return fetch


def all_in(db: Any, status: str, count: int, destination: str | None = None) -> Any:
    fetch = statuses(db, destination)

    async def check() -> bool:
        found = await fetch()
        return len(found) == count and all(s == status for s in found)

    return check


async def attempts(db: Any, destination: str | None = None) -> list[Any]:
    return list(
        await db.fetch(
            "SELECT * FROM relay.attempts WHERE $1::text IS NULL OR destination_id = $1"
            " ORDER BY id",
            destination,
        )
    )


# --- retries -------------------------------------------------------------------------


async def test_retries_follow_the_schedule_and_end_failed(
    start_relay: Any, http: Any, receiver: Receiver, db: Any, database_url: str
) -> None:
    receiver.reply = lambda n, path: Reply(status=500, body="down")
    settings = make_settings(
        database_url,
        tenants=tenant(dest("orders", receiver.url())),
        delivery={"retry": {"schedule_seconds": [0.4, 0.8], "jitter": 0}},
    )
    server = await start_relay(settings)
    event = await publish(http, server)

    await wait_until(all_in(db, "failed", 1), timeout=15)
    first, second, third = receiver.requests
    # Each retry waits its scheduled delay (a local timer wakes the claim, so the delay is
    # not rounded up to the next poll); generous upper bounds for a busy machine.
    assert 0.4 <= second.at - first.at < 0.4 + 0.6
    assert 0.8 <= third.at - second.at < 0.8 + 0.6
    assert {r.headers["webhook-id"] for r in receiver.requests} == {event["id"]}

    rows = await attempts(db)
    assert [(a["number"], a["status"], a["http_status"]) for a in rows] == [
        (1, "failed", 500),
        (2, "failed", 500),
        (3, "failed", 500),
    ]
    delivery = await db.fetchrow("SELECT * FROM relay.deliveries")
    assert (delivery["attempts"], delivery["last_error"]) == (3, "http_500")
    # Auto-disable is off by default: the destination keeps its count but stays enabled.
    destination = await db.fetchrow("SELECT * FROM relay.destinations")
    assert destination["consecutive_failures"] == 3
    assert destination["disabled_at"] is None
    await asyncio.sleep(0.5)
    assert len(receiver.requests) == 3


async def test_retry_after_is_honoured_and_clamped(
    start_relay: Any, http: Any, receiver: Receiver, db: Any, database_url: str
) -> None:
    answers = [
        Reply(status=429, headers={"Retry-After": "1"}),
        Reply(status=503, headers={"Retry-After": "3600"}),
        Reply(status=200),
    ]
    receiver.reply = lambda n, path: answers[min(n, 2)]
    settings = make_settings(
        database_url,
        tenants=tenant(dest("orders", receiver.url())),
        delivery={
            "retry": {"schedule_seconds": [0.1, 0.1], "jitter": 0, "max_retry_after_seconds": 1.5}
        },
    )
    server = await start_relay(settings)
    await publish(http, server)

    await wait_until(all_in(db, "delivered", 1), timeout=15)
    first, second, third = receiver.requests
    assert 1.0 <= second.at - first.at < 1.0 + 0.6
    # 3600 s asked, 1.5 s allowed.
    assert 1.5 <= third.at - second.at < 1.5 + 0.6
    rows = await attempts(db)
    assert [a["http_status"] for a in rows] == [429, 503, 200]
    assert orjson.loads(rows[0]["response_headers"])["retry-after"] == "1"


async def test_notify_wakes_an_idle_dispatcher_long_before_the_poll(
    start_relay: Any, http: Any, receiver: Receiver, db: Any, database_url: str
) -> None:
    settings = make_settings(
        database_url,
        tenants=tenant(dest("orders", receiver.url())),
        delivery={"poll_interval_seconds": 60},
    )
    server = await start_relay(settings)
    dispatcher = server.app[DISPATCHER]
    await wait_until(lambda: _true(dispatcher.listening))
    await asyncio.sleep(0.3)  # idle: waiting on wake-up or a poll a minute away
    started = time.monotonic()
    await publish(http, server)
    await receiver.wait_for(1, timeout=5)
    assert time.monotonic() - started < 2


async def _true(value: bool) -> bool:
    return value


# --- what counts ---------------------------------------------------------------------


async def test_410_gone_disables_the_destination_and_pending_deliveries_wait(
    start_relay: Any, http: Any, receiver: Receiver, db: Any, database_url: str
) -> None:
    receiver.reply = lambda n, path: Reply(status=410) if path == "/gone" else Reply()
    settings = make_settings(
        database_url,
        tenants=tenant(dest("gone", receiver.url("/gone")), dest("ok", receiver.url("/ok"))),
        delivery={"per_destination_concurrency": 1},
    )
    # All published before any try: a disabled destination gets no new deliveries.
    server = await start_relay(settings, dispatcher=False)
    for n in range(5):
        await publish(http, server, data={"n": n})
    await start_relay(settings, api=False)

    await wait_until(disabled(db, "gone"))
    # The other destination is not affected.
    await wait_until(all_in(db, "delivered", 5, "ok"))
    row = await db.fetchrow("SELECT * FROM relay.destinations WHERE id = 'gone'")
    assert row["disabled_reason"] == "the receiver answered 410 Gone"
    # Nothing more went to it after the 410 (one at a time: per_destination_concurrency 1).
    await asyncio.sleep(0.6)
    assert len(receiver.on_path("/gone")) == 1
    found = await statuses(db, "gone")()
    assert found == ["pending"] * 5, found

    # Re-enabled (as PUT .../enable does), the pending deliveries resume.
    receiver.reply = lambda n, path: Reply()
    await db.execute(
        "UPDATE relay.destinations SET disabled_at = NULL, disabled_reason = NULL,"
        " consecutive_failures = 0 WHERE id = 'gone'"
    )
    await wait_until(all_in(db, "delivered", 5, "gone"), timeout=15)
    ids = {r.headers["webhook-id"] for r in receiver.on_path("/gone")}
    assert len(ids) == 5


async def test_rows_claimed_ahead_are_not_sent_after_a_410(
    start_relay: Any, http: Any, receiver: Receiver, db: Any, database_url: str
) -> None:
    # Cap 2: two requests in flight, one row claimed ahead. The 410s come slowly, so the
    # row ahead is waiting for a slot when they do; it must go back untried.
    receiver.reply = lambda n, path: Reply(status=410, delay=0.3)
    settings = make_settings(
        database_url,
        tenants=tenant(dest("gone", receiver.url("/gone"))),
        delivery={"per_destination_concurrency": 2},
    )
    server = await start_relay(settings, dispatcher=False)
    for n in range(8):
        await publish(http, server, data={"n": n})
    await start_relay(settings, api=False)

    await wait_until(disabled(db, "gone"))

    async def all_pending() -> bool:
        return await statuses(db, "gone")() == ["pending"] * 8

    await wait_until(all_pending)
    await asyncio.sleep(0.6)
    assert len(receiver.on_path("/gone")) == 2
    assert await db.fetchval("SELECT count(*) FROM relay.attempts") == 2
    assert await db.fetchval("SELECT sum(attempts) FROM relay.deliveries") == 2


async def test_redirect_is_not_followed_and_counts_as_failure(
    start_relay: Any, http: Any, receiver: Receiver, db: Any, database_url: str
) -> None:
    def reply(n: int, path: str) -> Reply:
        if path == "/hook":
            return Reply(status=302, headers={"Location": receiver.url("/elsewhere")})
        return Reply()

    receiver.reply = reply
    settings = make_settings(database_url, tenants=tenant(dest("orders", receiver.url())))
    server = await start_relay(settings)
    await publish(http, server, eligible_for_retry=False)

    await wait_until(all_in(db, "failed", 1))
    [attempt] = await attempts(db)
    assert (attempt["status"], attempt["http_status"], attempt["error_code"]) == (
        "failed",
        302,
        "redirect_not_followed",
    )
    assert receiver.on_path("/elsewhere") == []


@pytest.mark.parametrize(
    ("global_timeout", "destination_timeout"), [(0.5, None), (5.0, 0.5)], ids=["global", "dest"]
)
async def test_timeout_is_classified_and_bounded(
    start_relay: Any,
    http: Any,
    receiver: Receiver,
    db: Any,
    database_url: str,
    global_timeout: float,
    destination_timeout: float | None,
) -> None:
    receiver.reply = lambda n, path: Reply(delay=3)
    extra = {} if destination_timeout is None else {"timeout_seconds": destination_timeout}
    settings = make_settings(
        database_url,
        tenants=tenant(dest("orders", receiver.url(), **extra)),
        delivery={"timeout_seconds": global_timeout, "shutdown_grace_seconds": 0.2},
    )
    server = await start_relay(settings)
    await publish(http, server, eligible_for_retry=False)

    await wait_until(all_in(db, "failed", 1))
    [attempt] = await attempts(db)
    assert attempt["error_code"] == "timeout"
    assert attempt["http_status"] is None
    assert 450 <= attempt["duration_ms"] < 2000


async def test_response_bodies_are_capped_with_a_placeholder(
    start_relay: Any, http: Any, receiver: Receiver, db: Any, database_url: str
) -> None:
    bodies = {"/big": "x" * 100, "/exact": "y" * 16, "/small": "ok", "/nul": "a\x00b"}
    receiver.reply = lambda n, path: Reply(body=bodies[path])
    settings = make_settings(
        database_url,
        tenants=tenant(*(dest(p.strip("/"), receiver.url(p)) for p in bodies)),
        delivery={"response_body_cap_bytes": 16},
    )
    server = await start_relay(settings)
    await publish(http, server)

    await wait_until(all_in(db, "delivered", 4))
    stored = {a["destination_id"]: a["response_body"] for a in await attempts(db)}
    assert stored == {
        "big": TRUNCATED_PLACEHOLDER.format(cap=16),
        "exact": "y" * 16,
        "small": "ok",
        # PostgreSQL text cannot hold NUL: it is replaced, and the attempt still lands.
        "nul": "a\ufffdb",
    }


async def test_network_errors_are_classified(
    start_relay: Any, http: Any, receiver: Receiver, db: Any, database_url: str
) -> None:
    # A port nobody listens on, a server that hangs up mid-request, TLS to a plain-HTTP
    # server, and a name that does not resolve.
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.transport.abort()

    rude = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    rude_port = rude.sockets[0].getsockname()[1]
    closed = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    closed_port = closed.sockets[0].getsockname()[1]
    closed.close()
    await closed.wait_closed()
    try:
        settings = make_settings(
            database_url,
            tenants=tenant(
                dest("refused", f"http://127.0.0.1:{closed_port}/hook"),
                dest("reset", f"http://127.0.0.1:{rude_port}/hook"),
                dest("tls", f"https://127.0.0.1:{receiver.port}/hook"),
                dest("dns", "http://nonexistent.invalid/hook"),
            ),
        )
        server = await start_relay(settings)
        await publish(http, server, eligible_for_retry=False)
        await wait_until(all_in(db, "failed", 4))
    finally:
        rude.close()
        await rude.wait_closed()
    codes = {a["destination_id"]: a["error_code"] for a in await attempts(db)}
    assert codes == {
        "refused": "connection_refused",
        "reset": "connection_reset",
        "tls": "tls_error",
        "dns": "dns_error",
    }
    for attempt in await attempts(db):
        assert attempt["error_detail"]
        assert attempt["http_status"] is None


# --- signatures ----------------------------------------------------------------------


async def test_standard_webhooks_signature_and_rotation(
    start_relay: Any, http: Any, receiver: Receiver, db: Any, database_url: str
) -> None:
    settings = make_settings(database_url, tenants=tenant(dest("orders", receiver.url())))
    server = await start_relay(settings)

    await publish(http, server, data={"n": 1})
    [plain] = await receiver.wait_for(1)
    Webhook(SECRET).verify(plain.body, dict(plain.headers))
    assert len(plain.headers["webhook-signature"].split(" ")) == 1

    # Rotation: the old secret stays valid for a while and both sign.
    await db.execute(
        "UPDATE relay.destinations SET previous_secret = $1,"
        " previous_secret_invalid_at = now() + interval '1 hour'",
        OLD_SECRET,
    )
    await publish(http, server, data={"n": 2})
    rotating = (await receiver.wait_for(2))[1]
    Webhook(SECRET).verify(rotating.body, dict(rotating.headers))
    Webhook(OLD_SECRET).verify(rotating.body, dict(rotating.headers))

    # Past previous_secret_invalid_at only the current secret signs.
    await db.execute(
        "UPDATE relay.destinations SET previous_secret_invalid_at = now() - interval '1 second'"
    )
    await publish(http, server, data={"n": 3})
    expired = (await receiver.wait_for(3))[2]
    Webhook(SECRET).verify(expired.body, dict(expired.headers))
    with pytest.raises(WebhookVerificationError):
        Webhook(OLD_SECRET).verify(expired.body, dict(expired.headers))


async def test_outpost_signature_mode_with_metadata_and_rotation(
    start_relay: Any, http: Any, receiver: Receiver, db: Any, database_url: str
) -> None:
    settings = make_settings(
        database_url,
        tenants=tenant(dest("orders", receiver.url(), webhook_mode="outpost")),
    )
    server = await start_relay(settings)
    await db.execute(
        "UPDATE relay.destinations SET previous_secret = $1,"
        " previous_secret_invalid_at = now() + interval '1 hour',"
        ' delivery_metadata = \'{"app-id": "relay-test"}\'',
        OLD_SECRET,
    )
    before = datetime.now(UTC).replace(microsecond=0)
    event = await publish(
        http, server, data={"user_id": "u1"}, metadata={"source": "crm"}, id="evt-outpost-1"
    )
    [request] = await receiver.wait_for(1)
    headers = request.headers
    assert orjson.loads(request.body) == {"user_id": "u1"}
    assert headers["x-outpost-event-id"] == event["id"] == "evt-outpost-1"
    assert headers["x-outpost-topic"] == "order.created"
    # RFC 3339 UTC to the second, as Outpost sends it since v0.16.
    sent = datetime.strptime(headers["x-outpost-timestamp"], "%Y-%m-%dT%H:%M:%SZ")
    assert before <= sent.replace(tzinfo=UTC) <= datetime.now(UTC)
    assert headers["x-outpost-source"] == "crm"
    assert headers["x-outpost-app-id"] == "relay-test"
    assert "webhook-signature" not in headers

    scheme, _, signatures = headers["x-outpost-signature"].partition("=")
    assert scheme == "v0"
    expected = [
        hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest()
        for secret in (SECRET, OLD_SECRET)
    ]
    assert signatures.split(",") == expected


# --- isolation -----------------------------------------------------------------------


async def test_a_hanging_destination_does_not_starve_the_others(
    start_relay: Any, http: Any, receiver: Receiver, db: Any, database_url: str
) -> None:
    receiver.reply = lambda n, path: Reply(delay=30) if path == "/slow" else Reply()
    settings = make_settings(
        database_url,
        tenants=tenant(
            dest("slow", receiver.url("/slow"), timeout_seconds=20),
            dest("fast", receiver.url("/fast")),
        ),
        delivery={
            "concurrency": 4,
            "per_destination_concurrency": 2,
            "shutdown_grace_seconds": 0.2,
        },
    )
    server = await start_relay(settings)
    for n in range(10):
        await publish(http, server, data={"n": n})

    # Every fast delivery goes through while the slow receiver holds its two slots.
    await wait_until(all_in(db, "delivered", 10, "fast"), timeout=10)
    assert len(receiver.on_path("/slow")) == 2
    await asyncio.sleep(0.5)
    assert len(receiver.on_path("/slow")) == 2
    # Two in flight and one claimed ahead, next in line (half the cap again).
    slow = await statuses(db, "slow")()
    assert sorted(slow) == ["delivering"] * 3 + ["pending"] * 7

    # Stopping: the two cut short become interrupted attempts; the one next in line goes
    # back untried, with no attempt row and its count of attempts as it was.
    await server.close()
    assert await statuses(db, "slow")() == ["pending"] * 10
    rows = await db.fetch(
        "SELECT a.error_code FROM relay.attempts a JOIN relay.deliveries d ON d.id = a.delivery_id"
        " WHERE d.destination_id = 'slow'"
    )
    assert sorted(r["error_code"] for r in rows) == ["interrupted"] * 2
    assert (
        await db.fetchval(
            "SELECT sum(attempts) FROM relay.deliveries WHERE destination_id = 'slow'"
        )
        == 2
    )


async def test_global_cap_bounds_deliveries_in_flight(
    start_relay: Any, http: Any, receiver: Receiver, db: Any, database_url: str
) -> None:
    receiver.reply = lambda n, path: Reply(delay=30)
    settings = make_settings(
        database_url,
        tenants=tenant(*(dest(f"d{i}", receiver.url(f"/d{i}")) for i in range(3))),
        delivery={
            "concurrency": 4,
            "per_destination_concurrency": 10,
            "shutdown_grace_seconds": 0.2,
        },
    )
    server = await start_relay(settings)
    for n in range(5):
        await publish(http, server, data={"n": n})
    await receiver.wait_for(4)
    await asyncio.sleep(0.8)
    assert len(receiver.requests) == 4
    assert (await statuses(db)()).count("delivering") == 4


# --- destination health --------------------------------------------------------------


async def test_auto_disable_after_consecutive_failures_and_reenable_resumes(
    start_relay: Any, http: Any, receiver: Receiver, db: Any, database_url: str
) -> None:
    receiver.reply = lambda n, path: Reply(status=500) if path == "/flaky" else Reply()
    settings = make_settings(
        database_url,
        tenants=tenant(dest("flaky", receiver.url("/flaky")), dest("ok", receiver.url("/ok"))),
        delivery={
            "auto_disable_after_failures": 3,
            "per_destination_concurrency": 1,
            "retry": {"schedule_seconds": [0.2, 0.2, 0.2, 0.2, 0.2], "jitter": 0},
        },
    )
    server = await start_relay(settings, dispatcher=False)
    for n in range(4):
        await publish(http, server, data={"n": n})
    await start_relay(settings, api=False)

    await wait_until(disabled(db, "flaky"))
    row = await db.fetchrow("SELECT * FROM relay.destinations WHERE id = 'flaky'")
    assert row["consecutive_failures"] == 3
    assert row["disabled_reason"] == "3 consecutive failed attempts"
    await asyncio.sleep(1.0)
    assert len(receiver.on_path("/flaky")) == 3
    assert await statuses(db, "flaky")() == ["pending"] * 4
    # The healthy destination never noticed.
    await wait_until(all_in(db, "delivered", 4, "ok"))
    ok = await db.fetchrow("SELECT * FROM relay.destinations WHERE id = 'ok'")
    assert (ok["consecutive_failures"], ok["disabled_at"]) == (0, None)

    receiver.reply = lambda n, path: Reply()
    await db.execute(
        "UPDATE relay.destinations SET disabled_at = NULL, disabled_reason = NULL,"
        " consecutive_failures = 0 WHERE id = 'flaky'"
    )
    await wait_until(all_in(db, "delivered", 4, "flaky"), timeout=15)
    row = await db.fetchrow("SELECT * FROM relay.destinations WHERE id = 'flaky'")
    assert (row["consecutive_failures"], row["disabled_at"]) == (0, None)


async def test_deleted_destination_is_not_delivered_to(
    start_relay: Any, http: Any, receiver: Receiver, db: Any, database_url: str
) -> None:
    settings = make_settings(database_url, tenants=tenant(dest("orders", receiver.url())))
    server = await start_relay(settings, dispatcher=False)
    for n in range(3):
        await publish(http, server, data={"n": n})
    await db.execute("UPDATE relay.destinations SET deleted_at = now()")
    # A dispatcher of its own: a relay app would restore the config file's destination.
    engine = create_engine(database_url, pool_size=2)
    dispatcher = Dispatcher(engine, database_url, settings.delivery)
    await dispatcher.start()
    try:
        await asyncio.sleep(1.0)
        assert dispatcher.healthy
    finally:
        await dispatcher.stop()
        await engine.dispose()
    assert receiver.requests == []
    assert await statuses(db)() == ["pending"] * 3


# --- SSRF guard ----------------------------------------------------------------------


async def test_private_addresses_are_refused_by_default(
    start_relay: Any, http: Any, receiver: Receiver, db: Any, database_url: str
) -> None:
    # A name is judged at delivery, by what it resolves to. An IP literal the guard
    # refuses cannot be created in a process that refuses it (test_destination_addresses);
    # here it was created through an API process whose config opened loopback, and the
    # dispatcher's config does not.
    name = dest("name", f"http://localhost:{receiver.port}/name")
    api = await start_relay(make_settings(database_url, tenants=tenant(name)), dispatcher=False)
    async with http.post(
        api.make_url("/api/v1/tenants/acme/destinations"),
        json={
            "type": "webhook",
            "id": "literal",
            "topics": "*",
            "config": {"url": receiver.url("/literal")},
        },
        headers=admin_headers(),
    ) as resp:
        assert resp.status == 201, await resp.text()
    settings = make_settings(
        database_url, tenants=tenant(name), delivery={"allow_private_networks": []}
    )
    await start_relay(settings, api=False)
    await publish(http, api, eligible_for_retry=False)

    await wait_until(all_in(db, "failed", 2))
    assert receiver.requests == []
    rows = await attempts(db)
    assert {a["error_code"] for a in rows} == {"blocked_address"}
    for attempt in rows:
        assert "127.0.0.1 is not a public address (loopback)" in attempt["error_detail"]


async def test_allow_private_networks_from_the_environment_opens_a_range(
    start_relay: Any, http: Any, receiver: Receiver, db: Any, database_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "relay.toml"
    config.write_text(
        f"""
[server]
admin_api_key = "test-admin-key"

[[tenants]]
id = "acme"

[[tenants.destinations]]
id = "name"
url = "http://localhost:{receiver.port}/name"
secret = "{SECRET}"
"""
    )
    env = {
        "RELAY_DATABASE_URL": database_url,
        "RELAY_ALLOW_PRIVATE_NETWORKS": "10.0.0.0/8, 127.0.0.0/8",
        "RELAY_POLL_INTERVAL_SECONDS": "0.2",
    }
    settings = load_settings(config, env=env)
    assert settings.delivery.allow_private_networks == ["10.0.0.0/8", "127.0.0.0/8"]
    server = await start_relay(settings)
    await publish(http, server)
    [request] = await receiver.wait_for(1)
    Webhook(SECRET).verify(request.body, dict(request.headers))
    await wait_until(all_in(db, "delivered", 1))
