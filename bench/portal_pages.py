"""How long do the portal's and the console's pages take with a million attempts?

Loads history into a fresh database, starts relay on it (in this process, as the tests
do), opens a tenant's portal and the operator console, and requests each page several
times, printing the median and the slowest time from request to last byte (relay's
server time plus a loopback round trip). Two histories:

- spread: bench/history_scale.py's load (1M attempts over 30 days in time slices,
  20 tenants with 5 destinations each): what a relay that keeps 30 days holds;
- hot: the same number of attempts for ONE tenant within the last 24 hours, the worst
  case for the pages that count the last day (health, the chart).

    .venv/bin/python bench/portal_pages.py                      # embedded server
    RELAY_BENCH_DATABASE_URL=postgresql://... .venv/bin/python bench/portal_pages.py
    .venv/bin/python bench/portal_pages.py --attempts 100000    # smaller

The pages that chart attempts per hour (a destination's, the metrics page) are then
timed again in the same run, interleaved request by request, two ways: as relay reads
them (whole hours from relay.attempt_hours, migration 0014) and from relay.attempts alone
(aggregates.attempt_metrics_from_attempts, what relay did before: the baseline).

It writes bench/results/portal_pages.md. Times are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.history_scale import load as load_spread  # noqa: E402
from relay.db.engine import asyncpg_url, create_engine  # noqa: E402
from relay.db.migrate import upgrade  # noqa: E402
from tests.support.relay import ADMIN_KEY, admin_headers, make_settings  # noqa: E402

REPEAT = 7


async def load_hot(conn: asyncpg.Connection, attempts: int) -> dict[str, float]:
    """One tenant, 5 destinations, ``attempts`` attempts (2 per delivery on average, one
    delivery per event) all within the last 24 hours."""
    started = time.perf_counter()
    events = attempts // 2
    await conn.execute("INSERT INTO relay.tenants (id) VALUES ('tenant-1')")
    await conn.execute(
        """INSERT INTO relay.destinations (tenant_id, id, topics, url, secret)
           SELECT 'tenant-1', 'dest-' || d, '{*}', 'https://example.com/' || d, 'whsec_x'
           FROM generate_series(1, 5) d"""
    )
    await conn.execute(
        f"""
        INSERT INTO relay.events (seq, tenant_id, id, topic, data, time, created_at)
        SELECT relay.seq_at(t) | g, 'tenant-1', 'evt-' || g, 'topic.' || (g % 50),
               '{{"n": 1, "payload": "abcdefghijklmnopqrstuvwxyz"}}', t, t
        FROM generate_series(1, {events}) g,
             LATERAL (SELECT now() - interval '23 hours' * (1 - g::float8 / {events})
                      - interval '10 minutes') s(t)
        """
    )
    await conn.execute(
        "INSERT INTO relay.event_keys (tenant_id, id, seq) "
        "SELECT tenant_id, id, seq FROM relay.events"
    )
    await conn.execute(
        """
        INSERT INTO relay.deliveries (event_seq, tenant_id, destination_id, status, attempts,
                                      next_attempt_at, last_error, created_at, updated_at)
        SELECT e.seq, e.tenant_id, 'dest-' || (1 + g % 5),
               CASE WHEN g % 10 = 0 THEN 'failed' ELSE 'delivered' END, 1 + g % 3,
               e.time, CASE WHEN g % 10 = 0 THEN 'http_500' END,
               e.time, e.time + interval '2 seconds'
        FROM (SELECT e.*, (e.seq & 4294967295) AS g FROM relay.events e) e
        """
    )
    await conn.execute(
        """
        INSERT INTO relay.attempts (delivery_id, event_seq, tenant_id, destination_id, number,
                                    status, http_status, duration_ms, started_at, created_at)
        SELECT d.id, d.event_seq, d.tenant_id, d.destination_id, n,
               CASE WHEN d.status = 'delivered' AND n = d.attempts THEN 'success' ELSE 'failed' END,
               CASE WHEN d.status = 'delivered' AND n = d.attempts THEN 200 ELSE 500 END,
               5 + d.id % 200, t, t
        FROM relay.deliveries d, generate_series(1, d.attempts) n,
             LATERAL (SELECT d.created_at + interval '1 second' * n) s(t)
        """
    )
    await conn.execute(
        "VACUUM ANALYZE relay.events, relay.deliveries, relay.attempts, relay.event_keys,"
        " relay.attempt_hours"
    )
    return {"load": time.perf_counter() - started}


async def timed(client: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> list[float]:
    times = []
    for _ in range(REPEAT):
        started = time.perf_counter()
        async with client.request(method, url, **kw) as resp:
            body = await resp.read()
            assert resp.status == 200, (url, resp.status, body[:300])
        times.append((time.perf_counter() - started) * 1000)
    return times


# The pages whose charts relay.attempt_hours answers, timed with it and without it.
CHARTED = (
    ("destination (health, chart, attempts)", "/portal/destinations/{destination}"),
    ("metrics, 24 h", "/portal/metrics"),
    ("metrics, 7 days", "/portal/metrics?hours=168"),
)
FROM_ROLLUP = "hourly rollup"
FROM_ATTEMPTS = "attempts alone (baseline)"


async def rollup_against_attempts(
    portal: aiohttp.ClientSession, base: str, destination: str
) -> list[tuple[str, list[float]]]:
    """Each charted page, one request each way in turn (alternating which goes first),
    REPEAT times: the server runs in this process, so the baseline swaps the function the
    pages call."""
    from relay.db import aggregates

    ways = {FROM_ROLLUP: aggregates.attempt_metrics}
    ways[FROM_ATTEMPTS] = aggregates.attempt_metrics_from_attempts
    times: dict[tuple[str, str], list[float]] = {}
    try:
        for n in range(REPEAT):
            for label, path in CHARTED:
                order = list(ways) if n % 2 == 0 else list(ways)[::-1]
                for way in order:
                    aggregates.attempt_metrics = ways[way]  # type: ignore[assignment]
                    url = base + path.format(destination=destination)
                    started = time.perf_counter()
                    async with portal.get(url) as resp:
                        await resp.read()
                        assert resp.status == 200, (url, resp.status)
                    times.setdefault((label, way), []).append(
                        (time.perf_counter() - started) * 1000
                    )
    finally:
        aggregates.attempt_metrics = ways[FROM_ROLLUP]  # type: ignore[assignment]
    return [
        (f"same run: portal: {label}, {way}", times[(label, way)])
        for label, _ in CHARTED
        for way in ways
    ]


async def measure_pages(base: str, tenant: str, destination: str) -> list[tuple[str, list[float]]]:
    results: list[tuple[str, list[float]]] = []
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/api/v1/tenants/{tenant}/portal", headers=admin_headers()) as r:
            link = (await r.json())["redirect_url"]
        async with http.get(
            f"{base}/api/v1/attempts",
            params={"tenant_id": tenant, "destination_id": destination, "limit": "1"},
            headers=admin_headers(),
        ) as r:
            attempt = (await r.json())["models"][0]
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as portal:
        async with portal.get(link) as r:
            assert r.status == 200
        async with portal.get(f"{base}/portal/events") as r:
            cursor = re.search(r'\?cursor=([^&"]+)', await r.text())
        pages = [
            ("portal: destinations (health)", "/portal/destinations"),
            (
                "portal: destination (health, chart, attempts)",
                f"/portal/destinations/{destination}",
            ),
            ("portal: events, page 1", "/portal/events"),
            (
                "portal: events, page 2 (keyset)",
                f"/portal/events?cursor={cursor.group(1)}" if cursor else "/portal/events",
            ),
            ("portal: events of one destination", f"/portal/events?destination_id={destination}"),
            ("portal: attempts, page 1", "/portal/attempts"),
            (
                "portal: attempts, failed, one destination",
                f"/portal/attempts?status=failed&destination_id={destination}",
            ),
            ("portal: attempt detail", f"/portal/attempts/{attempt['id']}"),
            ("portal: event detail", f"/portal/events/{attempt['event_id']}"),
            ("portal: metrics, 24 h", "/portal/metrics"),
            ("portal: metrics, 7 days", "/portal/metrics?hours=168"),
        ]
        for label, path in pages:
            results.append((label, await timed(portal, "GET", base + path)))
        results += await rollup_against_attempts(portal, base, destination)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as console:
        async with console.get(f"{base}/console/login") as r:
            nonce = re.search(r'name="login_nonce" value="([^"]+)"', await r.text())
        assert nonce
        async with console.post(
            f"{base}/console/login", data={"login_nonce": nonce.group(1), "admin_key": ADMIN_KEY}
        ) as r:
            page = await r.text()
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', page)
        assert csrf
        for label, path in (
            ("console: overview", "/console/"),
            ("console: tenants", "/console/tenants"),
            ("console: tenant (health)", f"/console/tenants/{tenant}"),
            ("console: event story", f"/console/events?id={attempt['event_id']}"),
            ("console: live feed poll", "/console/attempts.json?after=0"),
        ):
            results.append((label, await timed(console, "GET", base + path)))
        results.append(
            (
                "console: replay dry run, one tenant",
                await timed(
                    console,
                    "POST",
                    f"{base}/console/replay",
                    data={"csrf": csrf.group(1), "tenant_id": tenant, "status": "failed"},
                ),
            )
        )
    return results


async def run(
    base_url: str, kind: str, attempts: int, keep: bool = False
) -> tuple[dict[str, float], Any]:
    from aiohttp.test_utils import TestServer

    from relay.app import create_app

    name = f"relay_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(asyncpg_url(base_url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    from sqlalchemy.engine import make_url

    url = make_url(base_url).set(database=name).render_as_string(hide_password=False)
    try:
        engine = create_engine(url, pool_size=1)
        await upgrade(engine)
        await engine.dispose()
        conn = await asyncpg.connect(asyncpg_url(url))
        try:
            print(f"[{kind}] loading {attempts:,} attempts ...", flush=True)
            if kind == "spread":
                timings = await load_spread(conn, attempts, attempts // 10)
            else:
                timings = await load_hot(conn, attempts)
            count = await conn.fetchval("SELECT count(*) FROM relay.attempts")
            print(f"[{kind}] {count:,} attempts loaded in {sum(timings.values()):.0f} s")
        finally:
            await conn.close()
        server = TestServer(create_app(make_settings(url), url), host="127.0.0.1")
        await server.start_server()
        try:
            base = str(server.make_url("")).rstrip("/")
            rows = await measure_pages(base, "tenant-1", "dest-1")
        finally:
            await server.close()
        for label, times in rows:
            print(
                f"  {label:<48} median {statistics.median(times):7.1f} ms  max {max(times):7.1f} ms"
            )
        return {"attempts": float(count)}, rows
    finally:
        if keep:
            print(f"[{kind}] kept database {name}")
        else:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--attempts", type=int, default=1_000_000)
    parser.add_argument("--only", choices=("spread", "hot"))
    parser.add_argument("--keep", action="store_true", help="keep the databases (to EXPLAIN)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "portal_pages.md"))
    args = parser.parse_args()
    server = None
    base_url = os.environ.get("RELAY_BENCH_DATABASE_URL")
    if not base_url:
        from relay.embedded import server_url, start_server

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = start_server(tempfile.mkdtemp(prefix="relay-bench-"), cleanup_mode="delete")
        base_url = server_url(server, "postgres")
    results = {}
    load_before = os.getloadavg()[0]
    try:
        for kind in ("spread", "hot"):
            if args.only in (None, kind):
                results[kind] = await run(base_url, kind, args.attempts, args.keep)
    finally:
        if server is not None:
            server.cleanup()
    write_report(Path(args.out), args, results, (load_before, os.getloadavg()[0]))
    print(f"wrote {args.out}")


def write_report(
    path: Path, args: Any, results: dict[str, Any], results_load: tuple[float, float]
) -> None:
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    lines = [
        "# Portal and console pages with a million attempts",
        "",
        f"Machine: {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}. "
        f"Command: `.venv/bin/python bench/portal_pages.py --attempts {args.attempts}`.",
        f"Each page requested {REPEAT} times in a row; time from request to last byte "
        "(relay's server time plus a loopback round trip). The machine is shared: load "
        f"average {results_load[0]:.1f} when the run began, {results_load[1]:.1f} at its end "
        "(on 2 CPUs), so the minimum is the best estimate of a page's own cost.",
        "",
    ]
    for kind, (sizes, rows) in results.items():
        what = (
            "spread over 30 days, 20 tenants x 5 destinations (bench/history_scale.py's load)"
            if kind == "spread"
            else "one tenant, 5 destinations, all within the last 24 hours"
        )
        lines += [
            f"## {kind}: {int(sizes['attempts']):,} attempts, {what}",
            "",
            "| page | min (ms) | median (ms) | max (ms) |",
            "|---|---:|---:|---:|",
        ]
        for label, times in rows:
            lines.append(
                f"| {label} | {min(times):.1f} | {statistics.median(times):.1f} "
                f"| {max(times):.1f} |"
            )
        lines.append("")
        by_label = dict(rows)
        lines += [
            "Same run, interleaved: the charted pages with the hourly rollup against the "
            "same pages from relay.attempts alone (the baseline, as before migration 0014):",
            "",
            "| page | rollup min / median (ms) | attempts alone min / median (ms) "
            "| ratio of medians |",
            "|---|---:|---:|---:|",
        ]
        for label, _ in CHARTED:
            new = by_label[f"same run: portal: {label}, {FROM_ROLLUP}"]
            old = by_label[f"same run: portal: {label}, {FROM_ATTEMPTS}"]
            lines.append(
                f"| {label} | {min(new):.1f} / {statistics.median(new):.1f} "
                f"| {min(old):.1f} / {statistics.median(old):.1f} "
                f"| {statistics.median(new) / statistics.median(old):.2f}x |"
            )
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
