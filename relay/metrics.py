"""Prometheus metrics: what this process did (counters, latency histograms, HTTP requests
by route), the process itself (``process_*``), and what the database holds (backlog
gauges, read at most once per ``metrics.database_cache_seconds`` however often scraped).

Counters are per process, as Prometheus expects: with several relay processes, sum them
in the query (`sum(rate(relay_events_published_total[5m]))`). No ``_created`` series: a
sample per counter and histogram that doubles the series and that Prometheus ignores
unless asked; they are left out per registry (``Metrics.render``), not by
prometheus_client's process-wide switch, so other code in the process keeps its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from relay.db.horizon import KINDS, Holder
from relay.supervise import Supervisor

# Publish-to-delivery latency buckets, seconds: from a few milliseconds (the
# LISTEN/NOTIFY path) to hours (retries on the default schedule).
LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
    1800,
    3600,
    21600,
)

# HTTP request buckets, seconds: a publish answered from a group commit (milliseconds) to
# a slow history query (seconds).
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

# Methods counted by name; anything else is "other" (a client may send any token).
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# Sample suffixes prometheus_client adds with the time a series was created.
_CREATED = "_created"
_HAS_CREATED = frozenset({"counter", "histogram", "summary", "gaugehistogram"})

# Claim statement buckets, seconds: from an idle claim (well under a millisecond) to one
# that waits for its commit's flush and a CPU on a busy machine (several milliseconds).
CLAIM_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5)


class Metrics:
    """One registry per application, so several apps can live in one process (tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # process_cpu_seconds_total, process_resident_memory_bytes, open fds, start time.
        ProcessCollector(registry=self.registry)
        # Requests by route template (/api/v1/tenants/{tenant_id}, not the path itself:
        # the label set stays bounded), method and status; observed by the access
        # middleware (relay/api/access.py).
        self.http_requests = Histogram(
            "relay_http_request_duration_seconds",
            "HTTP requests answered by this process, by route template, method and status, "
            "by duration until the response was ready.",
            ["route", "method", "status"],
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        # Children by (route, method, status): labels() costs a few microseconds a call.
        self._http_children: dict[tuple[str, str, int], Any] = {}
        self.published = Counter(
            "relay_events_published",
            "Events accepted (committed) by this process's publish APIs.",
            ["api"],
            registry=self.registry,
        )
        # Answered 202 and stored nowhere (api.strict_publish off): what a strict relay
        # would have refused with a 404, so a producer publishing for the wrong tenant
        # still shows somewhere.
        self.unknown_tenant = Counter(
            "relay_events_unknown_tenant",
            "Events POST /api/v1/publish answered for a tenant that does not exist, "
            "without storing them.",
            registry=self.registry,
        )
        # Bound once: labels() looks the child up on every call, and these run per publish.
        self.published_outpost = self.published.labels("outpost")
        self.published_pod = self.published.labels("pod")
        self.deliveries = Counter(
            "relay_deliveries",
            "Deliveries that reached a final state in this process: delivered or failed "
            "(no retries left).",
            ["outcome"],
            registry=self.registry,
        )
        self.attempts = Counter(
            "relay_attempts",
            "Delivery attempts recorded by this process, by outcome (success, http_4xx, "
            "http_5xx, timeout, connection_refused, ...; lease_expired and interrupted for "
            "tries cut short, as in relay.attempts).",
            ["outcome"],
            registry=self.registry,
        )
        self.backlog = BacklogCollector()
        self.registry.register(self.backlog)
        self.horizon = HorizonCollector()
        self.registry.register(self.horizon)
        # This process's supervised loops (dispatcher, router, publisher, ...): their
        # health, last progress and restarts, read at scrape time; /healthz reads them too.
        self.supervisors: list[Supervisor] = []
        self.registry.register(LoopCollector(self.supervisors))
        self.latency = Histogram(
            "relay_delivery_latency_seconds",
            "From publish (commit) to the successful attempt's answer.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # The claim's cost (relay/db/outbox.py): the statement behind the delivery rate,
        # and the first to slow down behind a backlog or a pinned snapshot.
        self.claim_duration = Histogram(
            "relay_claim_duration_seconds",
            "Claim statements run by this process's dispatcher, by duration.",
            buckets=CLAIM_BUCKETS,
            registry=self.registry,
        )
        self.claimed_rows = Counter(
            "relay_claimed",
            "Deliveries claimed by this process's dispatcher.",
            registry=self.registry,
        )

    def http_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One HTTP request answered (the route template, or "unmatched")."""
        key = (route, method, status)
        child = self._http_children.get(key)
        if child is None:
            if method not in HTTP_METHODS:
                method = "other"
            child = self.http_requests.labels(route, method, str(status))
            if len(self._http_children) < 10_000:  # bounded, whatever the traffic
                self._http_children[key] = child
        child.observe(seconds)

    def claimed(self, seconds: float, rows: int) -> None:
        """One claim statement: how long it took and how many deliveries it took."""
        self.claim_duration.observe(seconds)
        self.claimed_rows.inc(rows)

    def record_attempts(
        self, outcomes: Mapping[str, int], finals: Mapping[str, int], latencies: Iterable[float]
    ) -> None:
        """A batch of attempts at once (the dispatcher's recorder, per flush): one labels()
        lookup per distinct label instead of one per attempt."""
        for outcome, n in outcomes.items():
            self.attempts.labels(outcome).inc(n)
        for final, n in finals.items():
            self.deliveries.labels(final).inc(n)
        for seconds in latencies:
            self.latency.observe(max(seconds, 0.0))

    def render(self) -> bytes:
        return generate_latest(_WithoutCreated(self.registry))


class _WithoutCreated:
    """A registry's metrics without their ``_created`` samples."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        for metric in self.registry.collect():
            if metric.type in _HAS_CREATED:
                created = metric.name + _CREATED
                metric.samples = [s for s in metric.samples if s.name != created]
            yield metric


def attempt_outcome(success: bool, http_status: int | None, error_code: str | None) -> str:
    if success:
        return "success"
    if error_code and (http_status is None or error_code != "redirect_not_followed"):
        return error_code
    if http_status is not None:
        return f"http_{http_status // 100}xx"
    return "error"


@dataclass(frozen=True, slots=True)
class BacklogRow:
    status: str
    deliveries: int
    due_now: int
    oldest_age_seconds: float
    expired_leases: int


@dataclass(frozen=True, slots=True)
class ControlRow:
    tenant_id: str
    destination_id: str
    throttle: float
    paused: bool
    blocked_keys: int


class BacklogCollector(Collector):
    """Gauges from relay.outbox_backlog (and delivery control's state), filled in just
    before a scrape renders."""

    def __init__(self) -> None:
        self.rows: list[BacklogRow] = []
        self.control: list[ControlRow] = []

    def collect(self) -> Iterable[Metric]:
        backlog = GaugeMetricFamily(
            "relay_outbox_backlog", "Deliveries waiting or in flight, by status.", labels=["status"]
        )
        counts = {"pending": 0, "delivering": 0} | {r.status: r.deliveries for r in self.rows}
        for status, count in counts.items():
            backlog.add_metric([status], count)
        yield backlog
        yield GaugeMetricFamily(
            "relay_outbox_due",
            "Pending deliveries whose time has come.",
            value=sum(r.due_now for r in self.rows),
        )
        yield GaugeMetricFamily(
            "relay_outbox_oldest_pending_age_seconds",
            "Age of the oldest delivery still waiting or in flight.",
            value=max((r.oldest_age_seconds for r in self.rows), default=0.0),
        )
        yield GaugeMetricFamily(
            "relay_outbox_expired_leases",
            "In-flight deliveries whose lease ran out.",
            value=sum(r.expired_leases for r in self.rows),
        )
        labels = ["tenant_id", "destination_id"]
        throttle = GaugeMetricFamily(
            "relay_destination_throttle",
            "Adaptive backoff: the share of its rate and in-flight cap a destination that "
            "answered 429, 503 or timed out gets now (listed while below 1 or paused).",
            labels=labels,
        )
        paused = GaugeMetricFamily(
            "relay_destination_paused",
            "1 while nothing is claimed for the destination (its Retry-After).",
            labels=labels,
        )
        blocked = GaugeMetricFamily(
            "relay_ordered_keys_blocked",
            "Ordered keys held by a head that failed for good (ordering_on_failure block).",
            labels=labels,
        )
        for c in self.control:
            key = [c.tenant_id, c.destination_id]
            throttle.add_metric(key, c.throttle)
            paused.add_metric(key, 1.0 if c.paused else 0.0)
            blocked.add_metric(key, c.blocked_keys)
        yield throttle
        yield paused
        yield blocked


class LoopCollector(Collector):
    """Each supervised loop: healthy or not, when it last made progress, its restarts."""

    def __init__(self, supervisors: list[Supervisor]) -> None:
        self.supervisors = supervisors

    def collect(self) -> Iterable[Metric]:
        healthy = GaugeMetricFamily(
            "relay_loop_healthy",
            "1 when the background loop is running and made progress recently (or is idle).",
            labels=["loop"],
        )
        last = GaugeMetricFamily(
            "relay_loop_last_success_timestamp_seconds",
            "Unix time of the loop's last progress (a claim, a batch written, a lease renewed).",
            labels=["loop"],
        )
        restarts = CounterMetricFamily(
            "relay_loop_restarts",
            "Times the loop crashed and was started again.",
            labels=["loop"],
        )
        for supervisor in self.supervisors:
            for name, status in supervisor.health().items():
                loop = supervisor.loops[name]
                label = [f"{supervisor.owner}.{name}"]
                healthy.add_metric(label, 1.0 if status == "healthy" else 0.0)
                if loop.last_success is not None:
                    last.add_metric(label, loop.last_success)
                restarts.add_metric(label, loop.restarts)
        yield healthy
        yield last
        yield restarts


class HorizonCollector(Collector):
    """The xmin horizon's age, from the last sample of the process's horizon watch
    (relay/horizon.py): one series per kind of holder, 0 when there is none, so that
    ``max(relay_xmin_horizon_age_seconds)`` is the horizon and its label says who."""

    def __init__(self) -> None:
        # Oldest first; None: not sampled (yet, or the last sample failed).
        self.holders: list[Holder] | None = None

    def collect(self) -> Iterable[Metric]:
        seconds = GaugeMetricFamily(
            "relay_xmin_horizon_age_seconds",
            "Age of the oldest snapshot or transaction that keeps PostgreSQL from removing "
            "dead rows, by kind of holder (session, replication_slot, prepared_transaction); "
            "a session's counts from its transaction start, a slot's from when this "
            "process first saw it hold that xid.",
            labels=["kind"],
        )
        xids = GaugeMetricFamily(
            "relay_xmin_horizon_age_xids",
            "The same holders' age in transaction ids.",
            labels=["kind"],
        )
        if self.holders is not None:
            oldest: dict[str, Holder] = {}
            for holder in self.holders:
                oldest.setdefault(holder.kind, holder)
            for kind in KINDS:
                found = oldest.get(kind)
                seconds.add_metric([kind], (found.age_seconds or 0.0) if found else 0.0)
                xids.add_metric([kind], found.age_xids if found else 0)
        yield seconds
        yield xids
