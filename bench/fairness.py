"""Fairness between tenants (issue 23): tenant B publishes at a steady rate; its
publish-to-delivery latency is measured with nothing else going on, then while tenant A
publishes a burst as fast as it can and relay drains it.

relay runs as users run it (`relay dispatch`, default settings) against a fresh database
on the system PostgreSQL; bench/receiver.py receives (B's endpoint keeps arrival times).
Each tenant has one destination. Producers publish through relay's Python API
(relay.publish.publish, each event in its own transaction for B, 500 a transaction for
A's burst, from a separate process); an event's latency is its commit, by this machine's
clock, to its arrival at the receiver. Timings are reported, never asserted.

    .venv/bin/python bench/fairness.py                      # 100,000 for A; B at 50/s
    .venv/bin/python bench/fairness.py --burst 20000 --quiet-seconds 15
"""

# ruff: noqa: ASYNC110, ASYNC220, ASYNC221
# (a driver script: it starts and watches its processes around the load)

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg
import orjson

REPO = Path(__file__).resolve().parents[1]
RELAY = str(REPO / ".venv" / "bin" / "relay")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_database(url: str, name: str) -> str:
    return url.rsplit("/", 1)[0] + "/" + name


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def burst_child(url: str, count: int) -> None:
    """A's producer, in its own process: ``count`` events, 500 a transaction."""
    from relay.db.engine import create_engine
    from relay.publish import Event, publish

    engine = create_engine(url, pool_size=1)
    try:
        for start in range(0, count, 500):
            async with engine.begin() as conn:
                for n in range(start, min(count, start + 500)):
                    data = orjson.dumps({"n": n})
                    await publish(conn, Event("tenant-a", "burst", data, id=f"a-{n}"))
    finally:
        await engine.dispose()


class B:
    """B's producer: one event per transaction at ``rate``; commit times by id."""

    def __init__(self, url: str, rate: float) -> None:
        self.url, self.rate = url, rate
        self.committed: dict[str, tuple[float, str]] = {}
        self.phase = "quiet"
        self.stop = asyncio.Event()

    async def run(self) -> None:
        from relay.db.engine import create_engine
        from relay.publish import Event, publish

        engine = create_engine(self.url, pool_size=2)
        n = 0
        start = time.monotonic()
        try:
            while not self.stop.is_set():
                if self.phase == "stopped":
                    # --backlog: B waits while A's burst is queued (else B's own events
                    # of that time would be a backlog B's later events wait behind).
                    await asyncio.sleep(0.05)
                    start = time.monotonic() - n / self.rate
                    continue
                event_id = f"b-{n}"
                async with engine.begin() as conn:
                    await publish(conn, Event("tenant-b", "steady", b"{}", id=event_id))
                self.committed[event_id] = (time.time(), self.phase)
                n += 1
                await asyncio.sleep(max(0.0, start + n / self.rate - time.monotonic()))
        finally:
            await engine.dispose()


async def main_async(args: argparse.Namespace) -> None:
    name = f"relay_fair_{os.getpid()}"
    admin = await asyncpg.connect(args.server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = with_database(args.server, name)
    port = free_port()
    out = REPO / "bench" / "out"
    out.mkdir(exist_ok=True)
    config = out / f"fairness-{os.getpid()}.toml"
    config.write_text(
        f"""[delivery]
allow_private_networks = ["127.0.0.0/8"]

[[tenants]]
id = "tenant-a"
[[tenants.destinations]]
id = "a"
url = "http://127.0.0.1:{port}/hook/a"

[[tenants]]
id = "tenant-b"
[[tenants.destinations]]
id = "b"
url = "http://127.0.0.1:{port}/hook"
"""
    )
    env = os.environ | {"RELAY_DATABASE_URL": url, "RELAY_HEALTH_PORT": str(free_port())}
    procs = []
    try:
        receiver = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "receiver.py"), "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(receiver)
        subprocess.run([RELAY, "--config", str(config), "migrate"], env=env, check=True)
        for n in range(args.dispatchers):
            log = (out / f"fairness-dispatch-{n}.log").open("wb")
            env_n = env | {"RELAY_HEALTH_PORT": str(free_port())}
            procs.append(
                subprocess.Popen(
                    [RELAY, "--config", str(config), "dispatch"],
                    env=env_n,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        await asyncio.sleep(3)
        b = B(url, args.rate)
        producer = asyncio.create_task(b.run())
        await asyncio.sleep(args.quiet_seconds)
        dispatcher = procs[-1]
        if args.backlog:
            # A's burst waits in the outbox first: the dispatcher is stopped while it is
            # published (B's events of that time are left out), then drains it.
            b.phase = "stopped"
            dispatcher.terminate()
            dispatcher.wait(30)
            await asyncio.to_thread(
                subprocess.run,
                [sys.executable, __file__, "--burst-child", url, "--burst", str(args.burst)],
                cwd=REPO,
                check=True,
            )
            b.phase = "drain"
            await asyncio.sleep(3)  # B's events of the stop are due now: not measured
            log_path = out / "fairness-dispatch-backlog.log"
            procs.append(
                subprocess.Popen(
                    [RELAY, "--config", str(config), "dispatch"],
                    env=env | {"RELAY_HEALTH_PORT": str(free_port())},
                    stdout=log_path.open("wb"),
                    stderr=subprocess.STDOUT,
                )
            )
            # Measured from when it runs (what waited for its start is not fairness).
            while "relay dispatch running" not in log_path.read_text(errors="replace"):
                await asyncio.sleep(0.05)
            await asyncio.sleep(1)
            b.phase = "burst"
            child = procs[-1]
            published_at_start = True
        else:
            published_at_start = False
            b.phase = "burst"
        burst_started = time.monotonic()
        if not published_at_start:
            child = subprocess.Popen(
                [sys.executable, __file__, "--burst-child", url, "--burst", str(args.burst)],
                cwd=REPO,
            )
            procs.append(child)
        db = await asyncpg.connect(url)
        published_in = drained_in = None
        while True:
            await asyncio.sleep(1)
            if published_in is None and (published_at_start or child.poll() is not None):
                published_in = 0.0 if published_at_start else time.monotonic() - burst_started
            left = await db.fetchval(
                "SELECT count(*) FROM relay.deliveries_active WHERE tenant_id = 'tenant-a'"
            )
            if published_in is not None and left == 0:
                drained_in = time.monotonic() - burst_started
                break
        await db.close()
        b.phase = "after"
        await asyncio.sleep(3)
        b.stop.set()
        await producer
        await asyncio.sleep(2)
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/arrivals") as resp,
        ):
            arrivals = await resp.json()
        latency: dict[str, list[float]] = {"quiet": [], "burst": []}
        missing = 0
        for event_id, (committed, phase) in b.committed.items():
            if phase not in latency:
                continue
            if event_id not in arrivals:
                missing += 1
                continue
            latency[phase].append((arrivals[event_id] - committed) * 1000)
        report(args, latency, missing, published_in, drained_in)
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        admin = await asyncpg.connect(args.server)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def report(
    args: argparse.Namespace,
    latency: dict[str, list[float]],
    missing: int,
    published_in: float | None,
    drained_in: float | None,
) -> None:
    quiet, burst = latency["quiet"], latency["burst"]
    rows = []
    for phase, values in (("quiet", quiet), ("during A's burst", burst)):
        rows.append(
            f"| {phase} | {len(values)} | {statistics.median(values):.1f} | "
            f"{percentile(values, 0.99):.1f} | {max(values):.1f} |"
        )
    p99_ratio = percentile(burst, 0.99) / percentile(quiet, 0.99)
    p50_ratio = statistics.median(burst) / statistics.median(quiet)
    git = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    text = "\n".join(
        [
            f"# Fairness between tenants: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC at {git}",
            "",
            f"Tenant B publishes {args.rate:g}/s (one event a transaction); tenant A publishes "
            f"{args.burst:,} events (500 a transaction, another process) after "
            f"{args.quiet_seconds:g} s"
            + (
                " while the dispatcher is stopped (B pauses meanwhile), then it is started and "
                "drains them; the burst phase is the drain. "
                if args.backlog
                else ". "
            )
            + f"{args.dispatchers} `relay dispatch` process(es), "
            "default settings; bench/receiver.py. Latency: B's commit to its arrival, ms.",
            "",
            "| B's events | n | p50 ms | p99 ms | max ms |",
            "|---|---:|---:|---:|---:|",
            *rows,
            "",
            f"p50 during the burst / quiet: {p50_ratio:.2f}x; p99: {p99_ratio:.2f}x "
            "(issue 23's target: p99 under 2x).",
            f"A's burst: published in {published_in or 0:.1f} s, all delivered in "
            f"{drained_in or 0:.1f} s ({args.burst / (drained_in or 1):.0f} deliveries/s). "
            f"B's events not arrived: {missing}.",
            "",
        ]
    )
    print(text)
    results = REPO / "bench" / "results"
    kind = "-backlog" if args.backlog else ""
    path = results / f"fairness{kind}-{datetime.now(UTC):%Y%m%d-%H%M%S}.md"
    path.write_text(text)
    print(f"written to {path.relative_to(REPO)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--burst", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--quiet-seconds", type=float, default=30.0)
    parser.add_argument("--dispatchers", type=int, default=1)
    parser.add_argument(
        "--backlog", action="store_true", help="publish A's burst first, then drain it"
    )
    parser.add_argument("--burst-child", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if args.burst_child:
        asyncio.run(burst_child(args.burst_child, args.burst))
    else:
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
