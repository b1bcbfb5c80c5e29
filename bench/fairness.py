"""Fairness between tenants (issue 23): tenant B publishes at a steady rate; its
publish-to-delivery latency is measured with nothing else going on, then while tenant A
publishes a burst as fast as it can and relay drains it.

relay runs as users run it (`relay dispatch`, default settings) against a fresh database
on the system PostgreSQL. Each tenant has one destination, and its own receiver
(bench/receiver.py, a process each; B's keeps arrival times). With --group, B's tenant is
in a dispatcher group (relay/groups.py) and delivered by a `relay dispatch --group` of
its own, beside the dispatcher of everyone else. Producers publish through relay's Python API
(relay.publish.publish, each event in its own transaction for B, 500 a transaction for
A's burst, from a separate process); an event's latency is its commit, by this machine's
clock, to its arrival at the receiver. Timings are reported, never asserted.

With --old DIR (another checkout of relay, e.g. a `git worktree` of an earlier commit),
each round runs this checkout's dispatcher and then the other's, so both are measured
under the same load; --rounds repeats that. Beside the latencies each run reports what
the machine was doing during the burst: how busy both cores were, how long the
dispatcher's main thread waited for a core, and B's own publish transactions (commit
time included), which A's publishing may slow down but which are not part of the
latency measured.

    .venv/bin/python bench/fairness.py                      # 100,000 for A; B at 50/s
    .venv/bin/python bench/fairness.py --backlog            # A's burst queued, then drained
    .venv/bin/python bench/fairness.py --backlog --group    # B has a dispatcher of its own
    .venv/bin/python bench/fairness.py --backlog --group --nice-a 19 --a-rate 500
    .venv/bin/python bench/fairness.py --burst 30000 --quiet-seconds 15 --old ../main --rounds 2
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
from dataclasses import dataclass, field
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


def relay_command(old: str | None) -> list[str]:
    """`relay`, this checkout's or (``old``) another's, run with this environment."""
    if old is None:
        return [RELAY]
    from cpu_cost import relay_command as other_checkout

    return other_checkout(old)


def cores_busy() -> tuple[int, int]:
    """(busy, all) jiffies of all cores since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(values) - values[3] - values[4], sum(values)


def schedstat(pid: int) -> tuple[float, float]:
    """Seconds the process's main thread ran, and waited for a core, since it started."""
    ran, waited, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
    return int(ran) / 1e9, int(waited) / 1e9


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
    """B's producer: one event per transaction at ``rate``; commit times by id, and how
    long each transaction took (begin to commit)."""

    def __init__(self, url: str, rate: float) -> None:
        self.url, self.rate = url, rate
        self.committed: dict[str, tuple[float, str]] = {}
        self.took: dict[str, float] = {}
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
                began = time.monotonic()
                async with engine.begin() as conn:
                    await publish(conn, Event("tenant-b", "steady", b"{}", id=event_id))
                self.committed[event_id] = (time.time(), self.phase)
                self.took[event_id] = time.monotonic() - began
                n += 1
                await asyncio.sleep(max(0.0, start + n / self.rate - time.monotonic()))
        finally:
            await engine.dispose()


@dataclass
class Run:
    """One run's figures: B's latencies (ms) and publish transactions (ms) by phase."""

    label: str
    latency: dict[str, list[float]] = field(default_factory=dict)
    publish: dict[str, list[float]] = field(default_factory=dict)
    # The latency's two parts: commit to the request's start (notification, claim), and
    # the request's start to its arrival.
    claimed: dict[str, list[float]] = field(default_factory=dict)
    request: dict[str, list[float]] = field(default_factory=dict)
    missing: int = 0
    published_in: float = 0.0
    drained_in: float = 0.0
    cores_busy: float = 0.0
    dispatcher_waited: float = 0.0

    def p(self, phase: str, q: float, of: str = "latency") -> float:
        values = getattr(self, of)[phase]
        return statistics.median(values) if q == 0.5 else percentile(values, q)

    @property
    def p99_ratio(self) -> float:
        return self.p("burst", 0.99) / self.p("quiet", 0.99)


async def run_once(args: argparse.Namespace, label: str, old: str | None) -> Run:
    name = f"relay_fair_{os.getpid()}"
    admin = await asyncpg.connect(args.server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = with_database(args.server, name)
    port, b_port = free_port(), free_port()
    out = REPO / "bench" / "out"
    out.mkdir(exist_ok=True)
    config = out / f"fairness-{os.getpid()}.toml"
    settings = "".join(line + "\n" for line in args.delivery)
    if args.group:
        settings += '\n[delivery.groups]\nlatency = ["tenant-b"]\n'
    config.write_text(
        ("[database]\nmigrate_on_start = false\n\n" if old else "")
        + f"""[delivery]
allow_private_networks = ["127.0.0.0/8"]
{settings}
[[tenants]]
id = "tenant-a"
{f"rate_limit_per_second = {args.a_rate}" if args.a_rate else ""}
[[tenants.destinations]]
id = "a"
url = "http://127.0.0.1:{port}/hook/a"

[[tenants]]
id = "tenant-b"
[[tenants.destinations]]
id = "b"
url = "http://127.0.0.1:{b_port}/hook"
"""
    )
    env = os.environ | {"RELAY_DATABASE_URL": url, "RELAY_HEALTH_PORT": str(free_port())}
    relay = relay_command(old)
    run = Run(label)
    procs = []

    def pinned(command: list[str]) -> list[str]:
        """A's processes (its dispatcher and receiver), on --pin-a's cores and at
        --nice-a's priority, if given."""
        if args.nice_a:
            command = ["nice", "-n", str(args.nice_a), *command]
        return ["taskset", "-c", args.pin_a, *command] if args.pin_a else command

    def dispatch(log: str, *options: str) -> subprocess.Popen[bytes]:
        command = [*relay, "--config", str(config), "dispatch", *options]
        proc = subprocess.Popen(
            command if options else pinned(command),
            env=env | {"RELAY_HEALTH_PORT": str(free_port())},
            stdout=(out / log).open("wb"),
            stderr=subprocess.STDOUT,
        )
        procs.append(proc)
        return proc

    try:
        for receiver_port in (port, b_port):
            command = [sys.executable, str(REPO / "bench" / "receiver.py"), "--port"]
            receiver = subprocess.Popen(
                pinned([*command, str(port)]) if receiver_port == port else [*command, str(b_port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            procs.append(receiver)
        subprocess.run([RELAY, "--config", str(config), "migrate"], env=env, check=True)
        if old:
            from cpu_cost import at_revision_of

            await at_revision_of(url, old)
        if args.group:
            # B's own; the last of the list (the one measured and, with --backlog,
            # stopped while A's burst is queued) is everyone else's.
            dispatch("fairness-dispatch-group.log", "--group", "latency")
        dispatchers = [dispatch(f"fairness-dispatch-{n}.log") for n in range(args.dispatchers)]
        await asyncio.sleep(3)
        b = B(url, args.rate)
        producer = asyncio.create_task(b.run())
        await asyncio.sleep(args.quiet_seconds)
        burst = [sys.executable, __file__, "--burst-child", url, "--burst", str(args.burst)]
        if args.backlog:
            # A's burst waits in the outbox first: the dispatcher is stopped while it is
            # published (B's events of that time are left out), then drains it.
            b.phase = "stopped"
            dispatchers[-1].terminate()
            dispatchers[-1].wait(30)
            await asyncio.to_thread(subprocess.run, burst, cwd=REPO, check=True)
            b.phase = "drain"
            await asyncio.sleep(3)  # B's events of the stop are due now: not measured
            log_path = out / "fairness-dispatch-backlog.log"
            dispatchers[-1] = dispatch(log_path.name)
            # Measured from when it runs (what waited for its start is not fairness).
            while "relay dispatch running" not in log_path.read_text(errors="replace"):
                await asyncio.sleep(0.05)
            await asyncio.sleep(1)
        b.phase = "burst"
        burst_started = time.monotonic()
        busy_before = cores_busy()
        sched_before = schedstat(dispatchers[-1].pid)
        child = None if args.backlog else subprocess.Popen(burst, cwd=REPO)
        if child is not None:
            procs.append(child)
        db = await asyncpg.connect(url)
        published_in = 0.0 if args.backlog else None
        while True:
            await asyncio.sleep(1)
            if published_in is None and child is not None and child.poll() is not None:
                published_in = time.monotonic() - burst_started
            left = await db.fetchval(
                "SELECT count(*) FROM relay.deliveries_active WHERE tenant_id = 'tenant-a'"
            )
            if published_in is not None and left == 0:
                run.drained_in = time.monotonic() - burst_started
                break
        busy_after = cores_busy()
        sched_after = schedstat(dispatchers[-1].pid)
        run.published_in = published_in
        run.cores_busy = (busy_after[0] - busy_before[0]) / (busy_after[1] - busy_before[1])
        run.dispatcher_waited = (sched_after[1] - sched_before[1]) / run.drained_in
        b.phase = "after"
        await asyncio.sleep(3)
        b.stop.set()
        await producer
        await asyncio.sleep(2)
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{b_port}/arrivals") as resp,
        ):
            arrivals = await resp.json()
        # When the dispatcher began each of B's requests (its clock: this machine's).
        started = {
            r["id"]: float(r["started"])
            for r in await db.fetch(
                "SELECT e.id, extract(epoch FROM a.started_at) AS started "
                "FROM relay.attempts a JOIN relay.events e ON e.seq = a.event_seq "
                "WHERE a.tenant_id = 'tenant-b' AND a.number = 1"
            )
        }
        await db.close()
        for key in ("latency", "publish", "claimed", "request"):
            setattr(run, key, {"quiet": [], "burst": []})
        for event_id, (committed, phase) in b.committed.items():
            if phase not in run.latency:
                continue
            run.publish[phase].append(b.took[event_id] * 1000)
            if event_id not in arrivals:
                run.missing += 1
                continue
            run.latency[phase].append((arrivals[event_id] - committed) * 1000)
            if event_id in started:
                run.claimed[phase].append((started[event_id] - committed) * 1000)
                run.request[phase].append((arrivals[event_id] - started[event_id]) * 1000)
        return run
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


def describe(run: Run, args: argparse.Namespace) -> list[str]:
    rows = []
    for phase, title in (("quiet", "quiet"), ("burst", "during A's burst")):
        values = run.latency[phase]
        rows.append(
            f"| {title} | {len(values)} | {statistics.median(values):.1f} | "
            f"{percentile(values, 0.99):.1f} | {max(values):.1f} | "
            f"{run.p(phase, 0.5, 'claimed'):.1f} / {run.p(phase, 0.99, 'claimed'):.1f} | "
            f"{run.p(phase, 0.5, 'request'):.1f} / {run.p(phase, 0.99, 'request'):.1f} | "
            f"{run.p(phase, 0.5, 'publish'):.1f} / {run.p(phase, 0.99, 'publish'):.1f} |"
        )
    p50_ratio = run.p("burst", 0.5) / run.p("quiet", 0.5)
    return [
        f"### {run.label}",
        "",
        "| B's events | n | p50 ms | p99 ms | max ms | commit to request p50 / p99 | "
        "request to arrival p50 / p99 | B's publish p50 / p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"p50 during the burst / quiet: {p50_ratio:.2f}x; p99: {run.p99_ratio:.2f}x "
        "(issue 23's target: p99 under 2x).",
        f"A's burst: published in {run.published_in:.1f} s, all delivered in "
        f"{run.drained_in:.1f} s ({args.burst / (run.drained_in or 1):.0f} deliveries/s). "
        f"During it both cores were {run.cores_busy:.0%} busy and the dispatcher's main "
        f"thread waited for a core {run.dispatcher_waited:.0%} of the time. "
        f"B's events not arrived: {run.missing}.",
        "",
    ]


def report(args: argparse.Namespace, runs: list[Run]) -> None:
    git = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    how = (
        " while the dispatcher is stopped (B pauses meanwhile), then it is started and "
        "drains them; the burst phase is the drain. "
        if args.backlog
        else ". "
    )
    lines = [
        f"# Fairness between tenants: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC at {git}",
        "",
        f"Tenant B publishes {args.rate:g}/s (one event a transaction); tenant A publishes "
        f"{args.burst:,} events (500 a transaction, another process) after "
        f"{args.quiet_seconds:g} s{how}{args.dispatchers} `relay dispatch` process(es), "
        + ("and B's own `relay dispatch --group latency`, " if args.group else "")
        + (f"A's dispatcher and receiver pinned to cores {args.pin_a}, " if args.pin_a else "")
        + (f"A's dispatcher and receiver at nice {args.nice_a}, " if args.nice_a else "")
        + (f"tenant A limited to {args.a_rate:g}/s, " if args.a_rate else "")
        + "default settings; bench/receiver.py, one per tenant. Latency: B's commit to its "
        "arrival, ms. "
        "B's publish: its transaction, begin to commit, ms (not part of the latency).",
        "",
    ]
    if len(runs) > 1:
        lines += [
            f"Runs in the order they ran{f' (old: {args.old})' if args.old else ''}:",
            "",
            "| run | B quiet p50 / p99 | B during A's burst p50 / p99 | p99 ratio "
            "| A delivered/s | cores busy | dispatcher waited |",
            "|---|---|---|---|---:|---:|---:|",
            *(
                f"| {r.label} | {r.p('quiet', 0.5):.1f} / {r.p('quiet', 0.99):.1f} | "
                f"{r.p('burst', 0.5):.1f} / {r.p('burst', 0.99):.1f} | "
                f"{r.p99_ratio:.2f}x | {args.burst / (r.drained_in or 1):,.0f} | "
                f"{r.cores_busy:.0%} | {r.dispatcher_waited:.0%} |"
                for r in runs
            ),
            "",
        ]
    for run in runs:
        lines += describe(run, args)
    text = "\n".join(lines)
    print(text)
    results = REPO / "bench" / "results"
    kind = ("-backlog" if args.backlog else "") + ("-group" if args.group else "")
    path = results / f"fairness{kind}-{datetime.now(UTC):%Y%m%d-%H%M%S}.md"
    path.write_text(text)
    print(f"written to {path.relative_to(REPO)}")


async def main_async(args: argparse.Namespace) -> None:
    runs = []
    for round_ in range(args.rounds):
        variants: list[tuple[str, str | None]] = [("this checkout", None)]
        if args.old:
            variants.append(("old", args.old))
        for label, old in variants:
            name = f"{label}, round {round_ + 1}" if args.rounds > 1 or args.old else label
            runs.append(await run_once(args, name, old))
            print(f"{name}: B's p99 ratio {runs[-1].p99_ratio:.2f}x", flush=True)
    report(args, runs)


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
    parser.add_argument(
        "--delivery",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a [delivery] setting for the dispatcher, as TOML (per_destination_concurrency = 8)",
    )
    parser.add_argument(
        "--group",
        action="store_true",
        help="put B in a dispatcher group with a `relay dispatch --group` of its own",
    )
    parser.add_argument(
        "--a-rate",
        type=float,
        help="tenant A's rate_limit_per_second (a deployment-wide limit; default none)",
    )
    parser.add_argument(
        "--pin-a",
        metavar="CPUS",
        help="run A's dispatcher and receiver on these cores only (taskset -c): as if "
        "they ran on a machine of their own, beside B's group (PostgreSQL stays shared)",
    )
    parser.add_argument(
        "--nice-a",
        type=int,
        metavar="N",
        help="run A's dispatcher and receiver at CPU priority N (nice -n N): the bulk "
        "tenants' dispatcher at a lower priority than B's group (PostgreSQL's is unchanged)",
    )
    parser.add_argument("--old", help="another relay checkout, run after this one each round")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--burst-child", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.old:
        args.old = str(Path(args.old).resolve())
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
