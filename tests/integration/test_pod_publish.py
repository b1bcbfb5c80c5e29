"""The pod-style publish API (POST /publish/, GET /publish/{id}) against a live relay."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from typing import Any

import orjson
import pytest
from standardwebhooks import Webhook

from tests.support.receiver import Reply
from tests.support.relay import make_settings

USER = "https://user.example.com/profile/card#me"
PARTICIPANT = "https://participant.example.com/profile/card#me"
USER_WORK = "https://user.example.com/profile/work#me"
STRANGER = "https://stranger.example.com/profile/card#me"
KEY = "producer-key-0123456789"
LIMITED_KEY = "limited-key-0123456789"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

# The seed's curl example as it is written there, byte for byte, but for the comma after
# "source" and the item's closing brace, which it lacks.
BRUCE_WAYNE = b"""[
  {
    "recipient": "https://user.example.com/profile/card#me",
    "source": "https://participant.example.com/profile/card#me",
    "topic": "realestate/contact#add",
    "data": {
        "type": "AddAction",
        "object": {
            "type": "Contact",
            "name": "Bruce Wayne"
        }
    }
  }
]"""


def pod_settings(database_url: str, receiver: Any, **sections: Any) -> Any:
    def dest(id: str, topics: Any) -> dict[str, Any]:
        return {"id": id, "url": receiver.url(f"/{id}"), "topics": topics, "secret": SECRET}

    tenants = [
        {
            "id": "user",
            "pods": [USER, USER_WORK],
            "destinations": [
                dest("user-crm", ["realestate/contact"]),
                dest("user-billing", ["billing/*"]),
            ],
        },
        {
            "id": "participant",
            "pods": [PARTICIPANT],
            "destinations": [dest("participant-inbox", ["realestate/*"])],
        },
    ]
    publishers = [
        {
            "name": "producer",
            "key": KEY,
            "grants": [{"recipients": "*", "topics": ["realestate/*"]}],
        },
        {
            "name": "limited",
            "key": LIMITED_KEY,
            "grants": [{"recipients": [USER], "topics": ["realestate/contact#add"]}],
        },
    ]
    return make_settings(database_url, tenants=tenants, publishers=publishers, **sections)


def headers(key: str | None = KEY, content_type: str = "application/json") -> dict[str, str]:
    sent = {"Content-Type": content_type}
    if key is not None:
        sent["x-api-key"] = key
    return sent


async def post(http: Any, server: Any, body: Any, **kwargs: Any) -> tuple[int, Any, Any]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    sent = headers(**kwargs)
    async with http.post(server.make_url("/publish/"), data=data, headers=sent) as resp:
        return resp.status, await resp.json(), resp.headers


async def nothing_written(db: Any) -> bool:
    events = await db.fetchval("SELECT count(*) FROM relay.events")
    deliveries = await db.fetchval("SELECT count(*) FROM relay.deliveries")
    return events == 0 and deliveries == 0


async def wait_until(predicate: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.05)


def item(**fields: Any) -> dict[str, Any]:
    event = {"recipient": USER, "topic": "realestate/contact#add", "data": {"type": "AddAction"}}
    return {k: v for k, v in (event | fields).items() if v is not ...}


async def test_seed_example_reaches_recipient_and_source_subscribers_once(
    start_relay: Any, http: Any, receiver: Any, db: Any, database_url: str
) -> None:
    server = await start_relay(pod_settings(database_url, receiver))
    status, body, answer_headers = await post(http, server, BRUCE_WAYNE)

    assert status == 201
    assert answer_headers["Content-Type"].startswith("application/json")
    # The seed's answer, {"id": ...}, read as a client written from the seed reads it;
    # "ids" (every event of the array, in order) is relay's addition.
    entry = body
    assert body["ids"] == [body["id"]]
    base = str(server.make_url("/publish/"))
    assert re.fullmatch(re.escape(base) + "[0-9a-f]{32}", entry["id"])
    assert answer_headers["Location"] == entry["id"]
    event_id = entry["id"].rsplit("/", 1)[1]

    crm = (await receiver.wait_for(1, path="/user-crm"))[0]
    inbox = (await receiver.wait_for(1, path="/participant-inbox"))[0]
    for request in (crm, inbox):
        Webhook(SECRET).verify(request.body, dict(request.headers))
        assert request.headers["webhook-id"] == event_id
        envelope = request.json()
        assert list(envelope) == ["id", "topic", "recipient", "source", "time", "data"]
        assert envelope["id"] == entry["id"]
        assert envelope["topic"] == "realestate/contact#add"
        assert envelope["recipient"] == USER
        assert envelope["source"] == PARTICIPANT
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", envelope["time"])
        assert envelope["data"] == orjson.loads(BRUCE_WAYNE)[0]["data"]
    assert crm.body == inbox.body

    # One event row per receiving tenant, same id; one outbox row per subscribed destination.
    rows = await db.fetch(
        "SELECT tenant_id, id, metadata, time FROM relay.events ORDER BY tenant_id"
    )
    assert all(r["time"] == datetime.fromisoformat(crm.json()["time"]) for r in rows)
    assert [(r["tenant_id"], r["id"]) for r in rows] == [
        ("participant", event_id),
        ("user", event_id),
    ]
    assert all(orjson.loads(r["metadata"]) == {"publisher": "producer"} for r in rows)

    async def all_delivered() -> bool:
        statuses = await db.fetch("SELECT status FROM relay.deliveries")
        return len(statuses) == 2 and all(r["status"] == "delivered" for r in statuses)

    await wait_until(all_delivered)
    await asyncio.sleep(0.3)
    assert len(receiver.on_path("/user-crm")) == 1
    assert len(receiver.on_path("/participant-inbox")) == 1
    assert receiver.on_path("/user-billing") == []


async def test_single_object_body_and_public_url(
    start_relay: Any, http: Any, receiver: Any, db: Any, database_url: str
) -> None:
    settings = pod_settings(
        database_url, receiver, server={"public_url": "https://relay.example.com/"}
    )
    server = await start_relay(settings)
    status, body, answer_headers = await post(http, server, item())
    assert status == 201
    assert re.fullmatch(r"https://relay\.example\.com/publish/[0-9a-f]{32}", body["id"])
    assert answer_headers["Location"] == body["id"]
    [request] = await receiver.wait_for(1, path="/user-crm")
    assert request.json()["id"] == body["id"]
    assert request.json()["source"] is None


async def test_array_answers_ids_in_request_order(
    start_relay: Any, http: Any, receiver: Any, db: Any, database_url: str
) -> None:
    server = await start_relay(pod_settings(database_url, receiver))
    items = [item(data={"n": 1}), item(data={"n": 2}, recipient=PARTICIPANT)]
    status, body, answer_headers = await post(http, server, items)
    assert status == 201
    first, second = body["ids"]
    assert first != second and body["id"] == first
    assert answer_headers["Location"] == first
    [crm] = await receiver.wait_for(1, path="/user-crm")
    [inbox] = await receiver.wait_for(1, path="/participant-inbox")
    assert (crm.json()["id"], crm.json()["data"]) == (first, {"n": 1})
    assert (inbox.json()["id"], inbox.json()["data"]) == (second, {"n": 2})


async def test_same_tenant_as_recipient_and_source_gets_one_copy(
    start_relay: Any, http: Any, receiver: Any, db: Any, database_url: str
) -> None:
    server = await start_relay(pod_settings(database_url, receiver))
    # Two pods of one tenant, and a recipient list naming one of them twice.
    status, _, _ = await post(http, server, item(recipient=[USER, USER], source=USER_WORK))
    assert status == 201
    [request] = await receiver.wait_for(1, path="/user-crm")
    assert request.json()["recipient"] == [USER, USER]
    assert await db.fetchval("SELECT count(*) FROM relay.events") == 1
    assert await db.fetchval("SELECT count(*) FROM relay.deliveries") == 1
    await asyncio.sleep(0.3)
    assert len(receiver.requests) == 1


async def test_recipient_list_reaches_every_recipient(
    start_relay: Any, http: Any, receiver: Any, db: Any, database_url: str
) -> None:
    server = await start_relay(pod_settings(database_url, receiver))
    status, _, _ = await post(http, server, item(recipient=[USER, PARTICIPANT]))
    assert status == 201
    await receiver.wait_for(1, path="/user-crm")
    await receiver.wait_for(1, path="/participant-inbox")


async def test_pod_event_is_retried_like_any_other(
    start_relay: Any, http: Any, receiver: Any, db: Any, database_url: str
) -> None:
    receiver.reply = lambda n, path: Reply(status=500, body="boom") if n == 0 else Reply()
    server = await start_relay(pod_settings(database_url, receiver))
    status, body, _ = await post(http, server, item())
    assert status == 201
    first, second = await receiver.wait_for(2, path="/user-crm")
    assert first.body == second.body

    async def delivered() -> bool:
        return await db.fetchval("SELECT status FROM relay.deliveries") == "delivered"

    await wait_until(delivered)

    # The publisher reads its event back with each destination's state.
    event_url = server.make_url("/publish/" + body["id"].rsplit("/", 1)[1])
    async with http.get(event_url, headers={"x-api-key": KEY}) as resp:
        assert resp.status == 200
        state = await resp.json()
    assert {k: state[k] for k in ("id", "topic", "recipient", "source", "data")} == {
        "id": body["id"],
        "topic": "realestate/contact#add",
        "recipient": USER,
        "source": None,
        "data": {"type": "AddAction"},
    }
    assert state["deliveries"] == [
        {
            "tenant_id": "user",
            "destination_id": "user-crm",
            "status": "delivered",
            "attempts": 2,
            "last_error": None,
        }
    ]

    # Another publisher's key does not see it; no key is a 401.
    async with http.get(event_url, headers={"x-api-key": LIMITED_KEY}) as resp:
        assert resp.status == 404
        assert await resp.json() == {"error": f"Event {event_url.name} not found"}
    async with http.get(event_url) as resp:
        assert resp.status == 401
        assert await resp.json() == {"error": "Missing x-api-key header"}


TOPIC_FORM = "topic must have the form {domain}/{topic}#{action}, such as realestate/contact#add"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (item(recipient=...), {"error": "No recipient found"}),
        (item(recipient=""), {"error": "No recipient found"}),
        (item(recipient=[]), {"error": "No recipient found"}),
        (item(recipient=None), {"error": "No recipient found"}),
        (
            item(recipient="user.example.com"),
            {"error": "recipient must be a pod URL, such as " + USER},
        ),
        (item(source=7), {"error": "source must be a pod URL, such as " + USER}),
        (item(topic=...), {"error": "No topic found"}),
        (item(topic="realestate/contact"), {"error": TOPIC_FORM}),
        (item(topic="realestate#add"), {"error": TOPIC_FORM}),
        (item(topic="realestate/*#add"), {"error": TOPIC_FORM}),
        (item(topic=["realestate/contact#add"]), {"error": TOPIC_FORM}),
        (item(data=...), {"error": "No data found"}),
        (item(data=[1, 2]), {"error": "data must be a JSON object"}),
        (item(data="AddAction"), {"error": "data must be a JSON object"}),
        ([item(), item(recipient=...)], {"error": "No recipient found", "index": 1}),
        ([item(), item(), item(data=3)], {"error": "data must be a JSON object", "index": 2}),
        (
            ["not an event"],
            {"error": "event must be a JSON object with recipient, topic and data", "index": 0},
        ),
        ([], {"error": "the array is empty; send at least one event"}),
        ("text", {"error": "request body must be a JSON event object or an array of them"}),
        (b"", {"error": "request body is empty; send a JSON event or an array of them"}),
    ],
)
async def test_bad_request_is_400_with_the_error_and_writes_nothing(
    start_relay: Any, http: Any, receiver: Any, db: Any, database_url: str, body: Any, error: Any
) -> None:
    server = await start_relay(pod_settings(database_url, receiver))
    status, answer, _ = await post(http, server, body)
    assert (status, answer) == (400, error)
    assert await nothing_written(db)


async def test_non_json_body_is_400(
    start_relay: Any, http: Any, receiver: Any, db: Any, database_url: str
) -> None:
    server = await start_relay(pod_settings(database_url, receiver))
    status, answer, _ = await post(http, server, b'[{"recipient": "x" "topic": 1}]')
    assert status == 400
    with pytest.raises(orjson.JSONDecodeError) as parse_error:
        orjson.loads(b'[{"recipient": "x" "topic": 1}]')
    assert answer == {"error": f"request body is not valid JSON: {parse_error.value}"}
    assert await nothing_written(db)


@pytest.mark.parametrize(
    ("key", "body", "error"),
    [
        # The grant covers USER on realestate/contact#add only.
        (
            LIMITED_KEY,
            item(topic="realestate/contact#remove"),
            {"error": f"Not authorized to publish to {USER} on topic realestate/contact#remove"},
        ),
        (
            LIMITED_KEY,
            item(recipient=PARTICIPANT),
            {
                "error": f"Not authorized to publish to {PARTICIPANT} on topic "
                "realestate/contact#add"
            },
        ),
        # The source receives a copy too, so it needs a grant as well.
        (
            LIMITED_KEY,
            item(source=PARTICIPANT),
            {
                "error": f"Not authorized to publish to {PARTICIPANT} on topic "
                "realestate/contact#add"
            },
        ),
        (
            KEY,
            item(topic="crm/contact#add"),
            {"error": f"Not authorized to publish to {USER} on topic crm/contact#add"},
        ),
        # A grant for any recipient still fails closed on a pod no tenant answers for.
        (
            KEY,
            item(recipient=STRANGER),
            {"error": f"Not authorized to publish to {STRANGER} on topic realestate/contact#add"},
        ),
        (
            KEY,
            item(source=STRANGER),
            {"error": f"Not authorized to publish to {STRANGER} on topic realestate/contact#add"},
        ),
        (
            KEY,
            item(recipient=[USER, STRANGER]),
            {"error": f"Not authorized to publish to {STRANGER} on topic realestate/contact#add"},
        ),
    ],
)
async def test_unauthorized_is_403_with_the_seed_error_and_writes_nothing(
    start_relay: Any,
    http: Any,
    receiver: Any,
    db: Any,
    database_url: str,
    key: str,
    body: Any,
    error: Any,
) -> None:
    server = await start_relay(pod_settings(database_url, receiver))
    status, answer, _ = await post(http, server, body, key=key)
    assert (status, answer) == (403, error)
    assert await nothing_written(db)


async def test_array_with_one_unauthorized_item_writes_nothing(
    start_relay: Any, http: Any, receiver: Any, db: Any, database_url: str
) -> None:
    server = await start_relay(pod_settings(database_url, receiver))
    items = [item(), item(recipient=STRANGER), item(source=PARTICIPANT)]
    status, answer, _ = await post(http, server, items)
    assert status == 403
    assert answer == {
        "error": f"Not authorized to publish to {STRANGER} on topic realestate/contact#add",
        "index": 1,
    }
    assert await nothing_written(db)
    await asyncio.sleep(0.3)
    assert receiver.requests == []


@pytest.mark.parametrize(
    ("key", "error"),
    [
        (None, {"error": "Missing x-api-key header"}),
        ("", {"error": "Missing x-api-key header"}),
        ("not-a-key", {"error": "Invalid API key"}),
        # The admin key is not a publisher key.
        ("test-admin-key", {"error": "Invalid API key"}),
    ],
)
async def test_missing_or_unknown_key_is_401_and_writes_nothing(
    start_relay: Any,
    http: Any,
    receiver: Any,
    db: Any,
    database_url: str,
    key: str | None,
    error: Any,
) -> None:
    server = await start_relay(pod_settings(database_url, receiver))
    status, answer, _ = await post(http, server, item(), key=key)
    assert (status, answer) == (401, error)
    assert await nothing_written(db)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
async def test_other_content_type_is_415_and_writes_nothing(
    start_relay: Any, http: Any, receiver: Any, db: Any, database_url: str, content_type: str
) -> None:
    server = await start_relay(pod_settings(database_url, receiver))
    status, answer, _ = await post(http, server, item(), content_type=content_type)
    assert (status, answer) == (415, {"error": "Content-Type must be application/json"})
    assert await nothing_written(db)


async def test_json_with_charset_is_accepted(
    start_relay: Any, http: Any, receiver: Any, db: Any, database_url: str
) -> None:
    server = await start_relay(pod_settings(database_url, receiver))
    status, _, _ = await post(http, server, item(), content_type="application/json; charset=utf-8")
    assert status == 201


async def test_body_past_the_limit_is_413_and_writes_nothing(
    start_relay: Any, http: Any, receiver: Any, db: Any, database_url: str
) -> None:
    settings = pod_settings(database_url, receiver, server={"max_body_bytes": 2048})
    server = await start_relay(settings)
    status, answer, _ = await post(http, server, item(data={"pad": "x" * 4096}))
    assert (status, answer) == (413, {"error": "request body too large (limit 2048 bytes)"})
    assert await nothing_written(db)


async def test_errors_under_publish_use_the_pod_shape_and_elsewhere_outposts(
    start_relay: Any, http: Any, receiver: Any, database_url: str
) -> None:
    server = await start_relay(pod_settings(database_url, receiver))
    async with http.delete(server.make_url("/publish/"), headers=headers()) as resp:
        assert (resp.status, await resp.json()) == (405, {"error": "method not allowed"})
    async with http.get(server.make_url("/publish/a/b"), headers=headers()) as resp:
        assert (resp.status, await resp.json()) == (404, {"error": "not found"})
    async with http.get(server.make_url("/publishers"), headers=headers()) as resp:
        assert (resp.status, await resp.json()) == (404, {"status": 404, "message": "not found"})
    async with http.get(server.make_url("/api/v1/nothing")) as resp:
        assert (resp.status, await resp.json()) == (404, {"status": 404, "message": "not found"})


async def test_config_pods_are_synced_and_released_when_the_tenant_leaves(
    start_relay: Any, http: Any, receiver: Any, db: Any, database_url: str
) -> None:
    settings = pod_settings(database_url, receiver)
    await start_relay(settings, dispatcher=False)
    rows = await db.fetch("SELECT id, pods FROM relay.tenants ORDER BY id")
    assert [(r["id"], r["pods"]) for r in rows] == [
        ("participant", [PARTICIPANT]),
        ("user", [USER, USER_WORK]),
    ]

    # The participant leaves the file: it no longer answers for its pod.
    remaining = [t.model_dump() for t in settings.tenants if t.id == "user"]
    server = await start_relay(
        make_settings(
            database_url,
            tenants=remaining,
            publishers=[p.model_dump() for p in settings.publishers],
        ),
        dispatcher=False,
    )
    rows = await db.fetch("SELECT id, pods FROM relay.tenants ORDER BY id")
    assert [(r["id"], r["pods"]) for r in rows] == [
        ("participant", []),
        ("user", [USER, USER_WORK]),
    ]
    status, answer, _ = await post(http, server, item(recipient=PARTICIPANT))
    assert (status, answer) == (
        403,
        {"error": f"Not authorized to publish to {PARTICIPANT} on topic realestate/contact#add"},
    )
