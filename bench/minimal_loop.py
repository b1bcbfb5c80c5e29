"""The delivery baseline: the smallest batched SKIP LOCKED loop that does the job.

    python bench/minimal_loop.py --dsn URL --url http://127.0.0.1:N/hook [--batch 200]

Claims a batch in one statement (UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED)),
POSTs the whole batch concurrently, marks it done in one statement, repeat; exits when
nothing is pending. No signing, no attempt rows, no leases, no retries, no health: the
floor of what a PostgreSQL-backed dispatcher costs. Table: bench_jobs (created by the
runner).
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
import asyncpg
import uvloop

CLAIM = """
    UPDATE bench_jobs j SET status = 'running'
    FROM (SELECT id FROM bench_jobs WHERE status = 'pending' ORDER BY id
          LIMIT $1 FOR UPDATE SKIP LOCKED) c
    WHERE j.id = c.id
    RETURNING j.id, j.payload
"""
DONE = "UPDATE bench_jobs SET status = 'done' WHERE id = ANY($1::bigint[])"


async def run(dsn: str, url: str, batch: int) -> None:
    conn = await asyncpg.connect(dsn)
    connector = aiohttp.TCPConnector(limit=batch)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def post(payload: str) -> None:
            async with session.post(
                url, data=payload, headers={"content-type": "application/json"}
            ) as resp:
                await resp.read()
                resp.raise_for_status()

        while True:
            rows = await conn.fetch(CLAIM, batch)
            if not rows:
                break
            await asyncio.gather(*(post(r["payload"]) for r in rows))
            await conn.execute(DONE, [r["id"] for r in rows])
    await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args()
    uvloop.install()
    asyncio.run(run(args.dsn, args.url, args.batch))


if __name__ == "__main__":
    main()
