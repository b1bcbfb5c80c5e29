"""The pod-style publish API: ``POST /publish/`` and ``GET /publish/{event_id}``.

A producer app publishes an event to a user's pod (the recipient) and optionally to a
participant's pod (the source); each forwards a copy to its subscribers. A pod is a
tenant (``tenants.pods``), its subscribers are the tenant's destinations. The contract
and the exact error bodies are the pod publish docs' (``{"error": "..."}``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from aiohttp import web

from relay import grants, tracing
from relay.api.errors import json_response, use_error_shape
from relay.api.rawjson import item_member_spans, member_span
from relay.api.validation import read_body
from relay.appkeys import ENGINE, METRICS, PUBLISHER, SETTINGS, TRACING
from relay.config import PublisherConfig
from relay.db import pods
from relay.errors import BadRequest, Forbidden, NotFound, RelayError, Unauthorized
from relay.publish import NUL_IN_DATA, TOO_DEEP, Event, data_json, holds_nul, time_ordered_hex

PREFIX = "/publish"
routes = web.RouteTableDef()

# {domain}/{topic}#{action}; a published topic is concrete, so no wildcards, and no
# control characters (it may travel as an HTTP header, x-outpost-topic).
TOPIC = re.compile(r"[^\s/#*\x00-\x1f\x7f]+(?:/[^\s/#*\x00-\x1f\x7f]+)+#[^\s/#*\x00-\x1f\x7f]+")
# Topics are indexed, and a btree entry has a size limit.
MAX_TOPIC = 255
POD_EXAMPLE = "https://user.example.com/profile/card#me"
NO_RECIPIENT = "No recipient found"


class UnsupportedMediaType(RelayError):
    """Content-Type must be application/json"""

    status = 415


@dataclass(frozen=True, slots=True)
class PodEvent:
    """One validated item of a publish request."""

    # As sent (a pod URL or a list of them): receivers see it unchanged.
    recipient: str | list[str]
    source: str | None
    topic: str
    # `data`, serialized once: the parsed object is not kept (a long array of them is
    # most of a request's memory), and the envelope embeds these bytes as they are.
    data: bytes

    @property
    def targets(self) -> list[str]:
        """Every pod that receives a copy, each once, recipients first."""
        recipients = [self.recipient] if isinstance(self.recipient, str) else self.recipient
        pods = recipients + ([self.source] if self.source else [])
        return list(dict.fromkeys(pods))


def pod_error_shape(status: int, message: str, data: object) -> Mapping[str, object]:
    # `data` carries {"index": n} for an array item; Outpost-style problem lists are joined.
    body: dict[str, object] = {"error": message}
    if isinstance(data, Mapping):
        body.update(data)
    elif isinstance(data, list) and data:
        body["error"] = "; ".join(str(problem) for problem in data)
    return body


def _is_pod_url(value: object) -> bool:
    return isinstance(value, str) and re.match(r"https?://[^/\s]+", value) is not None


def parse_event(raw: object) -> PodEvent:
    """Validate one item; a BadRequest names what is wrong with it."""
    if not isinstance(raw, dict):
        raise BadRequest("event must be a JSON object with recipient, topic and data")

    recipient = raw.get("recipient")
    if recipient is None or recipient == "" or recipient == []:
        raise BadRequest(NO_RECIPIENT)
    if isinstance(recipient, list):
        if not all(_is_pod_url(r) for r in recipient):
            raise BadRequest(f"recipient must be a list of pod URLs, such as {POD_EXAMPLE}")
    elif not _is_pod_url(recipient):
        raise BadRequest(f"recipient must be a pod URL, such as {POD_EXAMPLE}")

    source = raw.get("source")
    if source is not None and not _is_pod_url(source):
        raise BadRequest(f"source must be a pod URL, such as {POD_EXAMPLE}")

    topic = raw.get("topic")
    if topic is None or topic == "":
        raise BadRequest("No topic found")
    if isinstance(topic, str) and len(topic) > MAX_TOPIC:
        raise BadRequest(f"topic must be at most {MAX_TOPIC} characters")
    if not isinstance(topic, str) or not TOPIC.fullmatch(topic):
        raise BadRequest(
            "topic must have the form {domain}/{topic}#{action}, such as realestate/contact#add"
        )

    data = raw.get("data")
    if data is None:
        raise BadRequest("No data found")
    if not isinstance(data, dict):
        raise BadRequest("data must be a JSON object")
    serialized = data_json(data)
    if serialized is None:
        raise BadRequest(f"data {TOO_DEEP}")
    if holds_nul(serialized, data):
        raise BadRequest(f"data {NUL_IN_DATA}")
    return PodEvent(recipient=recipient, source=source, topic=topic, data=serialized)


class TooManyItems(RelayError):
    """too many events in one request"""

    status = 413


def parse_body(payload: object, max_items: int) -> tuple[list[PodEvent], bool]:
    """The request's events and whether they came as an array; every item is validated."""
    if isinstance(payload, dict):
        return [parse_event(payload)], False
    if not isinstance(payload, list):
        raise BadRequest("request body must be a JSON event object or an array of them")
    if not payload:
        raise BadRequest("the array is empty; send at least one event")
    if len(payload) > max_items:
        # Checked before any item: the work a request may cost is bounded up front.
        raise TooManyItems(
            f"the array holds {len(payload)} events; at most {max_items} per request "
            "(server.max_publish_items): split it"
        )
    events = []
    for index, item in enumerate(payload):
        try:
            events.append(parse_event(item))
        except BadRequest as exc:
            raise BadRequest(exc.message, data={"index": index}) from None
    return events, True


def authenticate(request: web.Request) -> PublisherConfig:
    key = request.headers.get("x-api-key", "").strip()
    if not key:
        raise Unauthorized("Missing x-api-key header")
    publisher = grants.identify(request.app[SETTINGS].publishers, key)
    if publisher is None:
        raise Unauthorized("Invalid API key")
    return publisher


def receiving_tenants(
    publisher: PublisherConfig,
    event: PodEvent,
    answered: Mapping[str, list[str]],
    index: int | None,
) -> list[str]:
    """The tenants that get a copy; refused unless every target pod is granted and known.

    A pod no tenant answers for is refused like an ungranted one (fail closed): which
    pods relay hosts is not the publisher's to learn.
    """
    tenant_ids: dict[str, None] = {}
    for pod in event.targets:
        if not grants.may_publish(publisher.grants, pod, event.topic) or pod not in answered:
            raise Forbidden(
                f"Not authorized to publish to {pod} on topic {event.topic}",
                data=None if index is None else {"index": index},
            )
        tenant_ids.update(dict.fromkeys(answered[pod]))
    # Recipient and source may be the same tenant: it still gets one copy.
    return list(tenant_ids)


# What a Host header may be when event URLs are built from it: a name or an address,
# and a port. Anything else would end up in event ids and Location headers.
HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def base_url(request: web.Request) -> str:
    configured = request.app[SETTINGS].server.public_url
    if configured:
        return configured.rstrip("/")
    if not HOST.fullmatch(request.host):
        raise BadRequest(
            "the Host header is not a host name and port, and event URLs are built from it "
            "(or from server.public_url, when set)"
        )
    return f"{request.scheme}://{request.host}"


def event_url(base: str, event_id: str) -> str:
    """The event's id as the publisher and receivers see it (and where to GET it)."""
    return f"{base}{PREFIX}/{event_id}"


def _now() -> datetime:
    # Millisecond precision: the envelope's time and the stored time are the same instant.
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


async def _read_payload(request: web.Request) -> tuple[bytes, object]:
    """The body as sent, and parsed."""
    if request.content_type != "application/json":
        raise UnsupportedMediaType()
    raw = await read_body(request)  # 413 past server.max_body_bytes, 408 if too slow
    if not raw.strip():
        raise BadRequest("request body is empty; send a JSON event or an array of them")
    try:
        return raw, orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None


def as_sent(raw: bytes, events: list[PodEvent], is_array: bool) -> list[PodEvent]:
    """Each event with `data` as the producer's bytes, not a serialization of the parsed
    value: a parser turns integers past 64 bits and numbers past a double's precision
    into approximations, and receivers must get what was sent. Where the span cannot be
    found, the compact serialization stays (the same JSON value)."""
    spans = item_member_spans(raw, "data") if is_array else [member_span(raw, "data")]
    if spans is None or len(spans) != len(events):
        return events
    return [
        event if span is None else dataclasses.replace(event, data=span)
        for event, span in zip(events, spans, strict=True)
    ]


def copies(
    event: PodEvent, event_id: str, base: str, tenant_ids: list[str], publisher: str, time: datetime
) -> list[Event]:
    """One relay event per receiving tenant, under one id; receivers get the envelope."""
    envelope = {
        "id": event_url(base, event_id),
        "topic": event.topic,
        "recipient": event.recipient,
        "source": event.source,
        "time": time.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "data": orjson.Fragment(event.data),
    }
    body = orjson.dumps(envelope)
    return [
        Event(
            tenant_id=tenant_id,
            id=event_id,
            topic=event.topic,
            data=event.data,
            body=body,
            metadata={"publisher": publisher},
            time=time,
        )
        for tenant_id in tenant_ids
    ]


@routes.post(PREFIX + "/")
@routes.post(PREFIX)
async def publish_to_pods(request: web.Request) -> web.Response:
    publisher = authenticate(request)
    settings = request.app[SETTINGS].server
    raw, parsed = await _read_payload(request)
    events, is_array = parse_body(parsed, settings.max_publish_items)
    del parsed  # parsed items are most of a request's memory; each event keeps bytes
    events = as_sent(raw, events, is_array)
    base = base_url(request)
    ids = [time_ordered_hex() for _ in events]
    time = _now()
    async with request.app[ENGINE].connect() as conn:
        targets = dict.fromkeys(pod for event in events for pod in event.targets)
        answered = await pods.tenants_for_pods(conn, list(targets))
        # Authorize every item before writing any: an array is all-or-nothing.
        receivers = [
            receiving_tenants(publisher, event, answered, index if is_array else None)
            for index, event in enumerate(events)
        ]
    written = []
    for event, event_id, tenant_ids in zip(events, ids, receivers, strict=True):
        written += copies(event, event_id, base, tenant_ids, publisher.name, time)
    # Group commit, all or nothing: answered once the copies have committed.
    with tracing.publishing(request.app[TRACING], written):
        await request.app[PUBLISHER].publish(written)
    # Committed: the events and their outbox rows are durable.
    # One event row per receiving tenant, as in relay.events.
    request.app[METRICS].published_pod.inc(len(written))
    urls = [event_url(base, event_id) for event_id in ids]
    # The seed's answer is {"id": ...} (for its own example, an array of one); an array's
    # every id, in order, is in "ids" too.
    payload = {"id": urls[0], "ids": urls} if is_array else {"id": urls[0]}
    return json_response(payload, status=201, headers={"Location": urls[0]})


@routes.get(PREFIX + "/{event_id:[^/]+}")
async def published_event(request: web.Request) -> web.Response:
    publisher = authenticate(request)
    event_id = request.match_info["event_id"]
    async with request.app[ENGINE].connect() as conn:
        found = await pods.published_event(conn, event_id, publisher.name)
    if found is None:
        # Someone else's event is not found either: ids are not for probing.
        raise NotFound(f"Event {event_id} not found")
    envelope = orjson.loads(found.body)
    # `data` as stored, not parsed and written again: data may nest as deep as relay
    # accepts, which puts the envelope one level deeper than orjson writes.
    span = member_span(found.body.encode(), "data")
    if span is not None:
        envelope["data"] = orjson.Fragment(span)
    return json_response(envelope | {"deliveries": [d.as_json() for d in found.deliveries]})


def setup(app: web.Application) -> None:
    app.add_routes(routes)
    use_error_shape(app, PREFIX, pod_error_shape)
