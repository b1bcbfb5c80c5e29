"""CPU time per publish request or per delivery, process by process: the measure that
holds up on a noisy shared VM, where rates swing by a quarter between runs.

    .venv/bin/python bench/cpu_cost.py publish  [--rounds 4] [--seconds 5] [--old DIR]
    .venv/bin/python bench/cpu_cost.py delivery [--rounds 2] [--total 50000] [--old DIR]

publish: the trivial handler and `relay api` (and, with --old, `relay api` from another
checkout of relay, e.g. a `git worktree` of an earlier commit) run side by side against
one throwaway PostgreSQL; wrk runs alternate between them, round by round. For each run:
req/s, CPU per request of the server and of all PostgreSQL processes (from
/proc/<pid>/stat), the share of both cores left idle, and the server's main thread on
CPU and waiting for one (/proc/<pid>/schedstat). --waits also samples the wait events
of PostgreSQL's client backends during relay's runs (what the group-commit writers do).

delivery: 50k-delivery drains by `relay dispatch` (and --old's) and by the bench's
minimal loop, alternating; CPU per delivery of the worker, PostgreSQL and the receiver,
how long relay's main thread and the receiver's ran and waited for a core, and
pg_stat_statements' time and WAL records per delivery for relay's statements.

Nothing here is asserted; it prints. Same PostgreSQL settings as bench/run.
"""

# ruff: noqa: ASYNC222
# (a measuring script: it reads /proc and reaps its worker from async code on purpose)
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import run_all as bench

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of the processes (0 for any that is gone)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / TICK


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    """User + system CPU of each process still running."""
    found: dict[int, float] = {}
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            found[pid] = cpu_seconds([pid])
    return found


def postgres_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-u", "embedded_postgres"], capture_output=True, text=True)
    return [int(pid) for pid in out.stdout.split()]


def with_children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [pid] + [int(child) for child in out.stdout.split()]


def machine_idle() -> tuple[int, int]:
    """(idle + iowait, all) jiffies of both cores since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return values[3] + values[4], sum(values)


def schedstat(pid: int) -> tuple[float, float]:
    """Seconds the main thread ran, and waited to run, since it started."""
    ran, waited, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
    return int(ran) / 1e9, int(waited) / 1e9


def relay_command(old: str | None) -> list[str]:
    if old is None:
        return [bench.RELAY]
    # The other checkout's relay package first on the path; this environment's libraries.
    code = (
        f"import sys; sys.path.insert(0, {old!r}); import relay; "
        f"assert relay.__file__.startswith({old!r}), relay.__file__; "
        "from relay.cli import main; sys.argv[0] = 'relay'; sys.exit(main())"
    )
    return [bench.PY, "-c", code]


def start_postgres() -> bench.PgServer:
    pg = bench.PgServer()
    try:
        bench.start_postgres(pg, shared_preload_libraries="pg_stat_statements")
    except BaseException:
        pg.cleanup()
        raise
    return pg


# --- publish ---------------------------------------------------------------------------


async def sample_waits(url: str, stop: asyncio.Event, waits: Counter[str]) -> None:
    conn = await asyncpg.connect(url)
    try:
        while not stop.is_set():
            rows = await conn.fetch(
                "SELECT state, coalesce(wait_event_type || ':' || wait_event, 'CPU') AS w "
                "FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "AND pid <> pg_backend_pid()"
            )
            waits.update(f"{r['state']} {r['w']}" for r in rows)
            await asyncio.sleep(0.002)
    finally:
        await conn.close()


async def publish(args: argparse.Namespace) -> None:
    pg = start_postgres()
    try:
        b = bench.Bench(pg, False, 1)
        url = await b.fresh_db()
        await bench.seed_relay(url, bench.free_port(), pending=0)
        config = str(b.config(url, 1))
        servers = {
            "trivial": [bench.PY, str(bench.BENCH / "servers.py"), "trivial", "--port", "{port}"],
            "relay": [*relay_command(None), "--config", config, "api"],
        }
        if args.old:
            servers["old"] = [*relay_command(args.old), "--config", config, "api"]
        with contextlib.ExitStack() as stack:
            ports: dict[str, int] = {}
            pids: dict[str, int] = {}
            for name, command in servers.items():
                port = ports[name] = bench.free_port()
                env = {"RELAY_PORT": str(port), "RELAY_WORKERS": str(args.workers)}
                argv = [a.replace("{port}", str(port)) for a in command]
                proc = stack.enter_context(bench.process(argv, env=env, log=f"cpu-{name}"))
                bench.wait_port(port, proc)
                pids[name] = proc.pid
                bench.wrk(ports[name], 1)  # warm-up
            for n in range(args.rounds):
                for name, port in ports.items():
                    procs, pg_procs = with_children(pids[name]), postgres_pids()
                    server0, pg0 = cpu_seconds(procs), cpu_seconds(pg_procs)
                    idle0, sched0 = machine_idle(), schedstat(pids[name])
                    stop, waits = asyncio.Event(), Counter[str]()
                    sampler = None
                    if args.waits and name != "trivial":
                        sampler = asyncio.create_task(sample_waits(url, stop, waits))
                    run = await asyncio.to_thread(bench.wrk, port, args.seconds)
                    stop.set()
                    if sampler is not None:
                        await sampler
                    server1, pg1 = cpu_seconds(procs), cpu_seconds(pg_procs)
                    idle1, sched1 = machine_idle(), schedstat(pids[name])
                    ok = run["ok"]
                    idle = (idle1[0] - idle0[0]) / (idle1[1] - idle0[1])
                    print(
                        f"round {n} {name:8s} {run['rps']:7.0f} req/s  "
                        f"server {1e6 * (server1 - server0) / ok:6.1f} µs/req  "
                        f"PostgreSQL {1e6 * (pg1 - pg0) / ok:6.1f} µs/req  "
                        f"p50 {run['p50_ms']:.1f} ms  cores idle {idle:.0%}  "
                        f"main thread on CPU {(sched1[0] - sched0[0]) / args.seconds:.0%}, "
                        f"waiting for one {(sched1[1] - sched0[1]) / args.seconds:.0%}",
                        flush=True,
                    )
                    if waits:
                        top = ", ".join(f"{k} {v}" for k, v in waits.most_common(8))
                        print(f"    backend samples: {top}", flush=True)
    finally:
        pg.cleanup()


# --- delivery --------------------------------------------------------------------------


async def delivery(args: argparse.Namespace) -> None:
    pg = start_postgres()
    b = bench.Bench(pg, False, 1)
    total = args.total
    workers = ["relay", *(["old"] if args.old else []), "loop"]
    receiver_port = bench.free_port()
    receiver_cmd = [bench.PY, str(bench.BENCH / "receiver.py"), "--port", str(receiver_port)]
    try:
        with bench.process(receiver_cmd, log="cpu-receiver") as receiver:
            bench.wait_port(receiver_port, receiver)
            async with aiohttp.ClientSession() as http:
                for n in range(args.rounds):
                    for name in workers:
                        await drain(b, http, name, n, total, receiver, receiver_port, args.old)
    finally:
        pg.cleanup()


async def at_revision_of(url: str, checkout: str | None) -> None:
    """Take a fresh database (migrated by this checkout) down to the schema of another,
    older checkout: it refuses to run on a schema newer than it knows."""
    from alembic import command
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from relay.db.engine import create_engine
    from relay.db.migrate import alembic_config

    assert checkout is not None
    theirs = Config()
    theirs.set_main_option("script_location", str(Path(checkout) / "migrations"))
    head = ScriptDirectory.from_config(theirs).get_current_head()
    assert head is not None
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda sync: command.downgrade(alembic_config(sync), head))
    finally:
        await engine.dispose()


async def drain(
    b: bench.Bench,
    http: aiohttp.ClientSession,
    name: str,
    round_: int,
    total: int,
    receiver: Any,
    receiver_port: int,
    old: str | None,
) -> None:
    if name == "loop":
        url = await bench.seed_minimal_loop(b, total)
        conn = await asyncpg.connect(url)
        hook = f"http://127.0.0.1:{receiver_port}/hook"
        command = [bench.PY, str(bench.BENCH / "minimal_loop.py"), "--dsn", url, "--url", hook]
    else:
        url = await b.fresh_db()
        if name == "old":
            await at_revision_of(url, old)
        await bench.seed_relay(url, receiver_port, pending=total)
        conn = await asyncpg.connect(url)
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await conn.execute("SELECT pg_stat_statements_reset()")
        path = b.config(url, receiver_port, **bench.DISPATCH_SETTINGS)
        if name == "old":
            # The schema is this checkout's: an older relay must not try to migrate it.
            path.write_text(
                path.read_text().replace("[database]\n", "[database]\nmigrate_on_start = false\n")
            )
        config = str(path)
        command = [*relay_command(old if name == "old" else None), "--config", config, "dispatch"]
    start: dict[str, float] = {}
    exited_cpu: list[float] = []
    # PostgreSQL's processes, last CPU reading of each: a backend exits with its client
    # (the loop exits when it is done), so its time is read while the drain runs.
    pg_start: dict[int, float] = {}
    pg_seen: dict[int, float] = {}
    # Main threads: (seconds ran, seconds waited for a core) at the start, then the share
    # of the drain. The loop's is gone once it exits: only relay's and the receiver's.
    sched: dict[str, tuple[float, float]] = {}
    shares: list[str] = []
    with bench.process(command, log=f"cpu-{name}") as proc:

        async def finished() -> bool:
            if pg_start:
                pg_seen.update(cpu_by_pid(postgres_pids()))
            if name != "loop":
                return not await conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM relay.deliveries "
                    "WHERE status IN ('pending', 'delivering'))"
                )
            # The loop exits when done: reap it here to read its CPU time.
            pid, _, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == 0:
                return False
            exited_cpu.append(usage.ru_utime + usage.ru_stime)
            proc.returncode = 0
            return True

        def on_start() -> None:
            start["worker"] = cpu_seconds([proc.pid])
            pg_start.update(cpu_by_pid(postgres_pids()))
            start["receiver"] = cpu_seconds([receiver.pid])
            start["clock"] = time.monotonic()
            sched["worker"], sched["receiver"] = schedstat(proc.pid), schedstat(receiver.pid)

        rate = await bench.timed_drain(http, receiver_port, total, finished, 300, on_start)
        worker = exited_cpu[0] if exited_cpu else cpu_seconds([proc.pid])
        pg_seen.update(cpu_by_pid(postgres_pids()))
        span = time.monotonic() - start["clock"]
        for who, pid in (("worker", proc.pid), ("receiver", receiver.pid)):
            if who == "worker" and name == "loop":
                continue
            ran, waited = schedstat(pid)
            shares.append(
                f"{who} main thread on CPU {(ran - sched[who][0]) / span:.0%}, "
                f"waiting for one {(waited - sched[who][1]) / span:.0%}"
            )
    pg = sum(cpu - pg_start.get(pid, 0.0) for pid, cpu in pg_seen.items())
    per = 1e6 / total
    line = (
        f"round {round_} {name:6s} {rate:7.0f}/s  worker {per * (worker - start['worker']):6.1f} "
        f"µs/delivery  PostgreSQL {per * pg:6.1f}  "
        f"receiver {per * (cpu_seconds([receiver.pid]) - start['receiver']):6.1f}"
        f"\n    {'; '.join(shares)}"
    )
    if name != "loop":
        rows = await conn.fetch(
            "SELECT calls, total_exec_time::numeric * 1000 / $1 AS us, "
            "wal_records::numeric / $1 AS wal, "
            "left(regexp_replace(query, '\\s+', ' ', 'g'), 32) AS q "
            "FROM pg_stat_statements WHERE calls > 10 ORDER BY total_exec_time DESC LIMIT 3",
            total,
        )
        line += "".join(
            f"\n    {r['q']}...: {r['calls']} calls, {r['us']:.1f} µs and {r['wal']:.1f} "
            "WAL records per delivery"
            for r in rows
        )
    await conn.close()
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["publish", "delivery"])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=5, help="publish: seconds per wrk run")
    parser.add_argument("--workers", type=int, default=1, help="publish: server.workers")
    parser.add_argument("--waits", action="store_true", help="publish: sample backend waits")
    parser.add_argument("--total", type=int, default=50_000, help="delivery: per drain")
    parser.add_argument("--old", help="another relay checkout to run side by side")
    args = parser.parse_args()
    if args.old:
        args.old = str(Path(args.old).resolve())
    started = time.monotonic()
    asyncio.run(publish(args) if args.what == "publish" else delivery(args))
    print(f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
