"""OpenTelemetry traces (the 'otel' extra): one trace per event, publish through delivery,
in one process and across an API process and a dispatcher process, exported over
OTLP/HTTP to a local receiver; the trace id on attempt rows. Off unless configured."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from relay import tracing
from relay.delivery.base import Outcome
from tests.support.receiver import Receiver, Reply
from tests.support.relay import (
    ADMIN_KEY,
    RelayProcess,
    admin_headers,
    free_port,
    make_settings,
)

EXTRA = "needs the 'otel' extra: pip install 'relay[otel]'"

# A producer's own trace, sent with its publish as W3C traceparent.
PRODUCER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PRODUCER_SPAN = "00f067aa0ba902b7"
PRODUCER_TRACEPARENT = f"00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-01"


def test_tracing_is_off_unless_an_endpoint_is_configured() -> None:
    assert not tracing.configured({})
    assert not tracing.configured({"OTEL_SERVICE_NAME": "relay"})
    assert tracing.configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert tracing.configured({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"})
    assert tracing.configured({"OTEL_TRACES_EXPORTER": "otlp"})
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    assert not tracing.configured(endpoint | {"OTEL_SDK_DISABLED": "true"})
    assert not tracing.configured(endpoint | {"OTEL_TRACES_EXPORTER": "none"})
    assert tracing.from_environment("serve", {}) is None


def test_without_the_extra_a_configured_endpoint_warns_and_traces_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # As on a machine without the extra: the exporter cannot be imported.
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    caplog.set_level(logging.WARNING, logger="relay.tracing")
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    assert tracing.from_environment("serve", env) is None
    assert "pip install 'relay[otel]'" in caplog.text


def test_grpc_is_refused_with_the_fix(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="relay.tracing")
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    assert tracing.from_environment("serve", env) is None
    assert "http/protobuf" in caplog.text


def test_service_name_defaults_to_relay_unless_the_environment_names_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("opentelemetry.sdk.trace", reason=EXTRA)
    # The SDK reads the process's environment itself.
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)

    def name(**env: str) -> Any:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return tracing.new_provider("api").resource.attributes["service.name"]

    assert name() == "relay"
    assert tracing.new_provider("dispatch").resource.attributes["relay.role"] == "dispatch"
    assert name(OTEL_RESOURCE_ATTRIBUTES="team=a, service.name=hooks-eu") == "hooks-eu"
    assert name(OTEL_SERVICE_NAME="hooks") == "hooks"


async def test_an_unsampled_attempt_writes_no_trace_id() -> None:
    """A trace the sampler dropped is exported nowhere: its id on an attempt row would
    name a trace no tool has."""
    pytest.importorskip("opentelemetry.sdk.trace", reason=EXTRA)
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON

    from tests.unit.test_retry import NOW, claimed

    async def sent() -> Outcome:
        return Outcome(True, NOW, 3, http_status=200)

    off = tracing.Tracing(TracerProvider(sampler=ALWAYS_OFF))
    assert (await off.attempt(claimed(), sent()))[1] is None
    on = tracing.Tracing(TracerProvider(sampler=ALWAYS_ON))
    outcome, trace_id = await on.attempt(claimed(), sent())
    assert outcome.success and trace_id is not None and len(trace_id) == 32


async def test_one_trace_from_the_producer_through_every_attempt(
    start_relay: Any, http: Any, receiver: Receiver, database_url: str, db: Any
) -> None:
    """In one process, with the SDK's in-memory exporter: the request's span continues
    the producer's trace, the publish span is its child, and each attempt's span (a
    failure, then its retry) is the publish span's child and links to it. The event
    keeps the publish span's traceparent; each attempt row, its span's trace id."""
    pytest.importorskip("opentelemetry.sdk.trace", reason=EXTRA)
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    receiver.reply = lambda n, path: Reply(status=500) if n == 0 else Reply()
    tenants = [{"id": "acme", "destinations": [{"id": "hook", "url": receiver.url()}]}]
    settings = make_settings(database_url, tenants=tenants)
    server = await start_relay(settings, tracer=tracing.Tracing(provider))

    async with http.post(
        server.make_url("/api/v1/publish"),
        json={"id": "evt-1", "tenant_id": "acme", "topic": "order.created", "data": {}},
        headers=admin_headers() | {"traceparent": PRODUCER_TRACEPARENT},
    ) as resp:
        assert resp.status == 202
    await receiver.wait_for(2)
    async with asyncio.timeout(10):
        while await db.fetchval("SELECT count(*) FROM relay.attempts") < 2:
            await asyncio.sleep(0.05)
        while len([s for s in exporter.get_finished_spans() if s.name == "deliver"]) < 2:
            await asyncio.sleep(0.05)

    async with http.get(server.make_url("/healthz")) as resp:
        assert resp.status == 200

    spans = exporter.get_finished_spans()
    assert not [s for s in spans if s.name.endswith("/healthz")]  # probes make no traces
    (request,) = [s for s in spans if s.name == "POST /api/v1/publish"]
    (publish,) = [s for s in spans if s.name == "publish"]
    attempts = [s for s in spans if s.name == "deliver"]
    trace_id = int(PRODUCER_TRACE, 16)
    assert request.kind == SpanKind.SERVER
    assert request.parent is not None and request.parent.span_id == int(PRODUCER_SPAN, 16)
    assert request.attributes["http.route"] == "/api/v1/publish"
    assert request.attributes["http.response.status_code"] == 202
    assert publish.kind == SpanKind.PRODUCER
    assert publish.parent is not None and publish.parent.span_id == request.context.span_id
    assert publish.attributes["messaging.message.id"] == "evt-1"
    published = publish.context.span_id
    assert sorted(s.attributes["relay.attempt.number"] for s in attempts) == [1, 2]
    for attempt in attempts:
        assert attempt.kind == SpanKind.CONSUMER
        assert attempt.context.trace_id == trace_id
        assert attempt.parent is not None and attempt.parent.span_id == published
        assert [link.context.span_id for link in attempt.links] == [published]
        assert attempt.attributes["relay.destination.id"] == "hook"
    codes = sorted(s.attributes.get("http.response.status_code") for s in attempts)
    assert codes == [200, 500]

    stored = await db.fetchval("SELECT trace_context FROM relay.events WHERE id = 'evt-1'")
    assert stored == f"00-{PRODUCER_TRACE}-{published:016x}-01"
    rows = await db.fetch(
        "SELECT attempt_number, status, trace_id FROM relay.delivery_log ORDER BY attempt_number"
    )
    assert [(r["attempt_number"], r["status"], r["trace_id"]) for r in rows] == [
        (1, "failed", PRODUCER_TRACE),
        (2, "success", PRODUCER_TRACE),
    ]


async def test_untraced_relay_stores_no_trace_context(
    start_relay: Any, http: Any, receiver: Receiver, database_url: str, db: Any
) -> None:
    """Tracing off (the default): nothing stored, even when the producer sends a
    traceparent; the columns stay NULL."""
    tenants = [{"id": "acme", "destinations": [{"id": "hook", "url": receiver.url()}]}]
    server = await start_relay(make_settings(database_url, tenants=tenants))
    async with http.post(
        server.make_url("/api/v1/publish"),
        json={"id": "evt-1", "tenant_id": "acme", "data": {}},
        headers=admin_headers() | {"traceparent": PRODUCER_TRACEPARENT},
    ) as resp:
        assert resp.status == 202
    await receiver.wait_for(1)
    async with asyncio.timeout(10):
        while not await db.fetchval("SELECT count(*) FROM relay.attempts"):
            await asyncio.sleep(0.05)
    assert await db.fetchval("SELECT trace_context FROM relay.events") is None
    assert await db.fetchval("SELECT trace_id FROM relay.attempts") is None


def _config(path: Path, port: int, receiver: Receiver) -> Path:
    path.write_text(
        f"""
[server]
port = {port}
admin_api_key = "{ADMIN_KEY}"

[delivery]
allow_private_networks = ["127.0.0.0/8"]
poll_interval_seconds = 0.2

[[tenants]]
id = "acme"

[[tenants.destinations]]
id = "hook"
url = "{receiver.url()}"
"""
    )
    return path


@pytest.mark.slow
async def test_a_trace_crosses_from_the_api_process_to_the_dispatcher_process(
    http: Any, receiver: Receiver, database_url: str, db: Any, tmp_path: Path
) -> None:
    """`relay api` and `relay dispatch` as users start them, configured by the standard
    OTEL_* variables alone, export to a real OTLP/HTTP receiver: the API's publish span
    and the dispatcher's attempt span are one trace, the attempt the publish span's child
    and linked to it, and the attempt row holds that trace id."""
    pytest.importorskip("opentelemetry.proto", reason=EXTRA)
    from tests.support.otlp import OtlpReceiver

    async with OtlpReceiver() as otlp:
        port, health_port = free_port(), free_port()
        config = _config(tmp_path / "relay.toml", port, receiver)
        env = {
            "RELAY_DATABASE_URL": database_url,
            "RELAY_HEALTH_PORT": str(health_port),
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
            # Export within 100 ms rather than the default 5 s.
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        api = RelayProcess("api", config, tmp_path / "api.log", env)
        dispatch = RelayProcess("dispatch", config, tmp_path / "dispatch.log", env)
        try:
            await api.ready(f"http://127.0.0.1:{port}/healthz")
            await dispatch.ready(f"http://127.0.0.1:{health_port}/healthz")
            async with http.post(
                f"http://127.0.0.1:{port}/api/v1/publish",
                json={"id": "evt-x", "tenant_id": "acme", "topic": "t", "data": {"n": 1}},
                headers=admin_headers(),
            ) as resp:
                assert resp.status == 202, await resp.text()
            await receiver.wait_for(1)
            spans = await otlp.wait_for(
                lambda spans: {"publish", "deliver"} <= {s.name for s in spans}
            )
        finally:
            codes = (api.stop(), dispatch.stop())
        assert codes == (0, 0), api.log + dispatch.log

    (publish,) = [s for s in spans if s.name == "publish"]
    (attempt,) = [s for s in spans if s.name == "deliver"]
    assert publish.resource["relay.role"] == "api"
    assert publish.resource["service.name"] == "relay"
    assert attempt.resource["relay.role"] == "dispatch"
    assert publish.attributes["messaging.message.id"] == "evt-x"
    assert attempt.attributes["messaging.message.id"] == "evt-x"
    assert attempt.trace_id == publish.trace_id
    assert attempt.parent_span_id == publish.span_id
    assert attempt.links == ((publish.trace_id, publish.span_id),)
    (request,) = [s for s in spans if s.name == "POST /api/v1/publish"]
    assert publish.parent_span_id == request.span_id

    async with asyncio.timeout(10):
        while not await db.fetchval("SELECT count(*) FROM relay.attempts"):
            await asyncio.sleep(0.05)
    assert await db.fetchval("SELECT trace_id FROM relay.attempts") == publish.trace_id
    stored = await db.fetchval("SELECT trace_context FROM relay.events WHERE id = 'evt-x'")
    # Flags: sampled (01), and the SDK may add "random trace id" (02).
    assert stored.startswith(f"00-{publish.trace_id}-{publish.span_id}-0"), stored
