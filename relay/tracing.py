"""OpenTelemetry traces, an optional extra: ``pip install 'relay[otel]'``.

Tracing is on when the extra is installed and an OTLP endpoint is configured with the
standard variables (``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, or ``OTEL_TRACES_EXPORTER=otlp``), unless
``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``. Otherwise
``from_environment`` answers None and relay does no tracing work at all: no import of
OpenTelemetry, no span, no context, one ``is None`` test on the hot paths.

What is traced, in every process with its own tracer provider (never the global one, so
an application that embeds relay keeps its own):

- each HTTP request: a SERVER span ``METHOD /route/{template}``, a child of the client's
  ``traceparent`` header when it sends one;
- each publish: a PRODUCER span ``publish``, whose W3C ``traceparent`` is written with the
  event (``relay.events.trace_context``);
- each delivery attempt, in whichever dispatcher process sends it: a CONSUMER span
  ``deliver`` that is a child of the event's publish span and links to it (OpenTelemetry's
  messaging conventions allow both for a single message). Its trace id is written on the
  attempt row (``relay.attempts.trace_id``), so SQL and traces meet.

Spans go out over OTLP/HTTP (protobuf) in batches from a background thread
(``OTEL_BSP_*`` tune it); every other ``OTEL_*`` variable the SDK reads applies
(headers, timeout, ``OTEL_SERVICE_NAME`` (default "relay"), ``OTEL_RESOURCE_ATTRIBUTES``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span

    from relay.db.outbox import Claimed
    from relay.delivery.base import Outcome
    from relay.publish import Event

log = logging.getLogger(__name__)

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
INSTALL_HINT = "pip install 'relay[otel]'"


def configured(env: Mapping[str, str]) -> bool:
    """Whether the environment asks for traces (the extra aside)."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters == "none":
        return False
    return "otlp" in exporters.split(",") or any(env.get(name) for name in ENDPOINT_VARIABLES)


def from_environment(role: str, env: Mapping[str, str] | None = None) -> Tracing | None:
    """A Tracing exporting over OTLP as the OTEL_* variables say, or None (not
    configured, or the extra not installed: then a warning says how to install it)."""
    env = os.environ if env is None else env
    if not configured(env):
        return None
    protocol = env.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    ).strip()
    if protocol not in ("", "http/protobuf"):
        log.warning(
            "tracing is off: OTEL_EXPORTER_OTLP_PROTOCOL=%s, but relay exports OTLP over "
            "HTTP only; set it to http/protobuf (and the endpoint to the collector's HTTP "
            "port, 4318 by default)",
            protocol,
        )
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "tracing is off: OTEL_* variables ask for traces, but OpenTelemetry is not "
            "installed; %s",
            INSTALL_HINT,
        )
        return None
    provider = new_provider(role, env)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    endpoint = next((env[name] for name in ENDPOINT_VARIABLES if env.get(name)), "default")
    log.info("tracing: OTLP/HTTP to %s", endpoint)
    return Tracing(provider, owned=True)


def new_provider(role: str, env: Mapping[str, str] | None = None) -> TracerProvider:
    """A tracer provider of relay's own: service.name "relay" unless OTEL_SERVICE_NAME
    says otherwise, and relay.role (serve, api, dispatch)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    env = os.environ if env is None else env
    attributes: dict[str, Any] = {"relay.role": role}
    # Given attributes win over the environment's: the default only where it names none.
    named = env.get("OTEL_SERVICE_NAME") or any(
        pair.split("=", 1)[0].strip() == "service.name"
        for pair in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(",")
    )
    if not named:
        attributes["service.name"] = "relay"
    return TracerProvider(resource=Resource.create(attributes))


def _hex_trace_id(span: Span) -> str | None:
    """The span's trace id in hex, or None when its trace is not sampled (nothing of it
    is exported: an id no tracing tool knows would only mislead)."""
    context = span.get_span_context()
    if not context.trace_flags.sampled:
        return None
    return format(context.trace_id, "032x")


class ServerSpan:
    """An HTTP request's span, current while its handler runs."""

    __slots__ = ("span", "token")

    def __init__(self, span: Span, token: Any) -> None:
        self.span = span
        self.token = token


class Tracing:
    """relay's spans, made with one tracer provider (see the module's docstring)."""

    def __init__(self, provider: TracerProvider, *, owned: bool = False) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        # Shut down (its last spans flushed) with the application that made it.
        self.owned = owned
        self.tracer = provider.get_tracer("relay")
        self.propagator = TraceContextTextMapPropagator()
        self._trace = trace
        self._context = context

    def shutdown(self) -> None:
        if self.owned:
            self.provider.shutdown()

    # --- the HTTP edge -------------------------------------------------------------------

    def server_span(self, request: web.Request, route: str) -> ServerSpan:
        parent = self.propagator.extract(request.headers)
        span = self.tracer.start_span(
            f"{request.method} {route}",
            context=parent,
            kind=self._trace.SpanKind.SERVER,
            attributes={
                "http.request.method": request.method,
                "http.route": route,
                "url.path": request.path,
            },
        )
        token = self._context.attach(self._trace.set_span_in_context(span, parent))
        return ServerSpan(span, token)

    def end_server_span(self, server: ServerSpan, status: int) -> str | None:
        """End a request's span; its trace id, in hex, if sampled (for the access log)."""
        span = server.span
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR))
        with contextlib.suppress(ValueError):  # detached in another context: harmless
            self._context.detach(server.token)
        span.end()
        return _hex_trace_id(span)

    # --- publish ----------------------------------------------------------------------

    @contextlib.contextmanager
    def publishing(self, events: Sequence[Event]) -> Iterator[Span]:
        """A PRODUCER span around writing ``events``, each stamped with its context."""
        first = events[0] if events else None
        attributes: dict[str, Any] = {
            "messaging.system": "relay",
            "messaging.operation.type": "send",
            "messaging.batch.message_count": len(events),
        }
        if first is not None:
            attributes["relay.tenant.id"] = first.tenant_id
            attributes["messaging.destination.name"] = first.topic
            if first.id is not None:
                attributes["messaging.message.id"] = first.id
        with self.tracer.start_as_current_span(
            "publish", kind=self._trace.SpanKind.PRODUCER, attributes=attributes
        ) as span:
            carrier: dict[str, str] = {}
            self.propagator.inject(carrier)
            traceparent = carrier.get("traceparent")
            for event in events:
                event.trace_context = traceparent
            yield span

    # --- delivery -----------------------------------------------------------------------

    def _parent(self, claimed: Claimed) -> Context | None:
        if not claimed.trace_context:
            return None
        return self.propagator.extract({"traceparent": claimed.trace_context})

    async def attempt(
        self, claimed: Claimed, call: Awaitable[Outcome]
    ) -> tuple[Outcome, str | None]:
        """Run a delivery attempt (``call``) in a CONSUMER span, the child of its
        event's publish span and linked to it; the outcome and the span's trace id (None
        if not sampled)."""
        trace = self._trace
        parent = self._parent(claimed)
        links = []
        if parent is not None:
            published = trace.get_current_span(parent).get_span_context()
            if published.is_valid:
                links.append(trace.Link(published))
        span = self.tracer.start_span(
            "deliver",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            links=links,
            attributes={
                "messaging.system": "relay",
                "messaging.operation.type": "process",
                "messaging.message.id": claimed.event_id,
                "messaging.destination.name": claimed.topic,
                "relay.tenant.id": claimed.tenant_id,
                "relay.destination.id": claimed.destination_id,
                "relay.destination.type": claimed.type,
                "relay.delivery.id": claimed.id,
                "relay.attempt.number": claimed.attempt,
                "relay.manual": claimed.manual,
            },
        )
        try:
            outcome = await call
        except BaseException as exc:  # cancelled by the shutdown, or a bug
            span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
            span.end()
            raise
        if outcome.http_status is not None:
            span.set_attribute("http.response.status_code", outcome.http_status)
        if not outcome.success:
            span.set_attribute("error.type", outcome.error_code or f"http_{outcome.http_status}")
            span.set_status(trace.Status(trace.StatusCode.ERROR, outcome.error_code))
        span.end()
        return outcome, _hex_trace_id(span)


def publishing(
    tracing: Tracing | None, events: Sequence[Event]
) -> contextlib.AbstractContextManager[Any]:
    """``tracing.publishing(events)``, or nothing when tracing is off."""
    if tracing is None:
        return contextlib.nullcontext()
    return tracing.publishing(events)
