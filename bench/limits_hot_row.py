"""Does one destination's bookkeeping row cap its throughput? (issue 23)

A rate-limited destination's claims take its advisory lock and read and write its token
bucket (one row of relay.destination_buckets) in a transaction: claims of that one
destination are serialised, across every dispatcher. This measures how many deliveries a
second one destination can get through that, against the same destination unlimited
(the plain claim), with 1 and 3 concurrent claimers, each claiming a batch and recording
it as delivered at once (no HTTP: the SQL is all there is). Limits set far above what is
reached, so the limit itself never holds anything back. Variants interleave, rounds
repeat. Timings are reported, never asserted.

    .venv/bin/python bench/limits_hot_row.py                # 20 s per variant, 2 rounds
    .venv/bin/python bench/limits_hot_row.py --seconds 5 --rounds 1

With --rollup it asks the same of the hourly rollup of attempts (migration 0014): every
batch recorded also upserts its destination's row of relay.attempt_hours for the hour,
by a trigger. Three databases, seeded alike, all claimed plainly (unlimited): "no rollup"
(the triggers dropped), "rollup" (as migrated: each session writes its own shard of the
row, its backend pid modulo 16) and "rollup, one shard" (the trigger's function changed
to write shard 0 from every session: the single hot row the shards avoid).

    .venv/bin/python bench/limits_hot_row.py --rollup --seconds 10 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from datetime import UTC, datetime

import asyncpg
import orjson
from sqlalchemy.engine import make_url

from relay.db import outbox
from relay.db.engine import connect_raw
from relay.delivery.base import Outcome
from relay.dispatcher import decide
from relay.retry import RetryPolicy

TENANT, DEST = "bench", "hot"
POLICY = RetryPolicy((1.0,), 0.0)


async def setup(url: str, events: int) -> None:
    from relay.db.engine import create_engine
    from relay.db.migrate import upgrade
    from relay.publish import Event, publish_many

    engine = create_engine(url, pool_size=1)
    await upgrade(engine)
    await engine.dispose()
    conn = await asyncpg.connect(url)
    await conn.execute("INSERT INTO relay.tenants (id) VALUES ($1)", TENANT)
    await conn.execute(
        "INSERT INTO relay.destinations (tenant_id, id, topics, url, secret)"
        " VALUES ($1, $2, '{*}', 'http://127.0.0.1:9/', 's')",
        TENANT,
        DEST,
    )
    for first in range(0, events, 1000):
        chunk = [
            Event(TENANT, "t", orjson.dumps({"n": n}))
            for n in range(first, min(events, first + 1000))
        ]
        await publish_many(conn, chunk)
    await conn.execute("VACUUM ANALYZE relay.deliveries_active, relay.events")
    await conn.close()


async def set_limited(url: str, limited: bool) -> None:
    conn = await asyncpg.connect(url)
    await conn.execute(
        "UPDATE relay.destinations SET rate_limit_per_second = $1, max_in_flight = $2",
        1_000_000.0 if limited else None,
        1_000_000 if limited else None,
    )
    await conn.close()


async def claimer(url: str, limited: bool, batch: int, until: float, done: list[int]) -> None:
    conn = await connect_raw(url, server_settings=outbox.CLAIM_SESSION)
    token = uuid.uuid4()
    take = [outbox.Take((TENANT, DEST), batch, None)]
    try:
        while time.monotonic() < until:
            if limited:
                rows, _ = await outbox.claim_limited(
                    conn, take, lease_seconds=60, token=token, default_in_flight=batch
                )
            else:
                rows = await outbox.claim(conn, take, lease_seconds=60, token=token)
            if not rows:
                raise RuntimeError("the backlog ran out: publish more (--events)")
            now = datetime.now(UTC)
            recorded = [decide(c, Outcome(True, now, 1, http_status=200), POLICY) for c in rows]
            async with conn.transaction():
                await outbox.record_outcomes(conn, recorded)
            done[0] += len(rows)
    finally:
        await conn.close()


async def run_variant(url: str, limited: bool, workers: int, args: argparse.Namespace) -> float:
    await set_limited(url, limited)
    done = [0]
    started = time.monotonic()
    until = started + args.seconds
    await asyncio.gather(*(claimer(url, limited, args.batch, until, done) for _ in range(workers)))
    return done[0] / (time.monotonic() - started)


def with_database(url: str, name: str) -> str:
    """The server's URL naming another database (a socket's ?host= kept)."""
    return make_url(url).set(database=name).render_as_string(hide_password=False)


ROLLUP_VARIANTS = ("no rollup", "rollup", "rollup, one shard")
SHARD_EXPRESSION = "(pg_backend_pid() % 16)::smallint"


async def rollup_twin(url: str, variant: str) -> None:
    """Make the database the variant says (setup has run on it)."""
    conn = await asyncpg.connect(url)
    try:
        if variant == "no rollup":
            for when in ("insert", "update", "delete", "truncate"):
                await conn.execute(f"DROP TRIGGER attempt_hours_{when} ON relay.attempts")
        elif variant == "rollup, one shard":
            definition = await conn.fetchval(
                "SELECT pg_get_functiondef('relay.count_attempt_hours'::regproc)"
            )
            assert SHARD_EXPRESSION in definition, "migration 0014's shard expression changed"
            await conn.execute(definition.replace(SHARD_EXPRESSION, "0::smallint"))
    finally:
        await conn.close()


async def shards(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT shard, sum(attempts) AS n FROM relay.attempt_hours GROUP BY 1 ORDER BY 1"
        )
    finally:
        await conn.close()
    return ", ".join(f"shard {r['shard']}: {r['n']:,}" for r in rows) or "(none)"


async def main_rollup(args: argparse.Namespace) -> None:
    names = {v: f"relay_hotrow_{os.getpid()}_{i}" for i, v in enumerate(ROLLUP_VARIANTS)}
    admin = await asyncpg.connect(args.server)
    for name in names.values():
        await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    urls = {v: with_database(args.server, name) for v, name in names.items()}
    try:
        for variant, url in urls.items():
            await setup(url, args.events)
            await rollup_twin(url, variant)
        results: dict[tuple[str, int], list[float]] = {}
        for n in range(args.rounds):
            for workers in (1, 3):
                order = ROLLUP_VARIANTS if n % 2 == 0 else ROLLUP_VARIANTS[::-1]
                for variant in order:
                    rate = await run_variant(urls[variant], False, workers, args)
                    results.setdefault((variant, workers), []).append(rate)
                    print(f"  {variant}, claimers={workers}: {rate:,.0f} deliveries/s")
        for variant in ROLLUP_VARIANTS[1:]:
            print(f"  {variant}: rows of the rollup by shard: {await shards(urls[variant])}")
        print()
        header = " | ".join(ROLLUP_VARIANTS)
        print(f"| claimers | {header} | rollup / none | one shard / none |")
        print("|---:|" + "---:|" * (len(ROLLUP_VARIANTS) + 2))
        for workers in (1, 3):
            rates = [statistics.median(results[(v, workers)]) for v in ROLLUP_VARIANTS]
            cells = " | ".join(f"{r:,.0f}/s" for r in rates)
            print(
                f"| {workers} | {cells} | {rates[1] / rates[0]:.2f}x | {rates[2] / rates[0]:.2f}x |"
            )
    finally:
        admin = await asyncpg.connect(args.server)
        for name in names.values():
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def main_async(args: argparse.Namespace) -> None:
    if args.rollup:
        return await main_rollup(args)
    name = f"relay_hotrow_{os.getpid()}"
    admin = await asyncpg.connect(args.server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = args.server.rsplit("/", 1)[0] + "/" + name
    try:
        await setup(url, args.events)
        results: dict[tuple[bool, int], list[float]] = {}
        for _ in range(args.rounds):
            for workers in (1, 3):
                for limited in (False, True):
                    rate = await run_variant(url, limited, workers, args)
                    results.setdefault((limited, workers), []).append(rate)
                    print(f"  limited={limited} claimers={workers}: {rate:,.0f} deliveries/s")
        print()
        print("| claimers | unlimited (plain claim) | limited (lock + bucket) | ratio |")
        print("|---:|---:|---:|---:|")
        for workers in (1, 3):
            plain = statistics.median(results[(False, workers)])
            held = statistics.median(results[(True, workers)])
            print(f"| {workers} | {plain:,.0f}/s | {held:,.0f}/s | {held / plain:.2f}x |")
    finally:
        admin = await asyncpg.connect(args.server)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--rollup", action="store_true", help="the hourly rollup's row instead")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
