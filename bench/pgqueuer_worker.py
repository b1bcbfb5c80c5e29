"""The peer: PgQueuer 1.6 (from PyPI, in bench/.venv) doing the same work, a job per POST.

    bench/.venv/bin/python bench/pgqueuer_worker.py install --dsn URL
    bench/.venv/bin/python bench/pgqueuer_worker.py enqueue --dsn URL --count N --payload-bytes B
    bench/.venv/bin/python bench/pgqueuer_worker.py work --dsn URL --url URL [--batch 100]

`work` drains the queue (QueueExecutionMode.drain) and exits.
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
import asyncpg
import uvloop
from pgqueuer import QueueManager
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job
from pgqueuer.queries import Queries
from pgqueuer.types import QueueExecutionMode


async def install(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    await Queries(AsyncpgDriver(conn)).install()
    await conn.close()


async def enqueue(dsn: str, count: int, payload_bytes: int) -> None:
    conn = await asyncpg.connect(dsn)
    queries = Queries(AsyncpgDriver(conn))
    payload = ('{"pad":"' + "x" * max(payload_bytes - 10, 0) + '"}').encode()
    for start in range(0, count, 5000):
        n = min(5000, count - start)
        await queries.enqueue(["deliver"] * n, [payload] * n, [0] * n)
    await conn.close()


async def work(dsn: str, url: str, batch: int) -> None:
    conn = await asyncpg.connect(dsn)
    # PgQueuer 1.x: the manager takes the repository (Queries), not the driver.
    qm = QueueManager(Queries(AsyncpgDriver(conn)))
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))

    @qm.entrypoint("deliver")
    async def deliver(job: Job) -> None:
        async with session.post(
            url, data=job.payload, headers={"content-type": "application/json"}
        ) as resp:
            await resp.read()
            resp.raise_for_status()

    await qm.run(batch_size=batch, mode=QueueExecutionMode.drain)
    await session.close()
    await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["install", "enqueue", "work"])
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--url")
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--payload-bytes", type=int, default=500)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    uvloop.install()
    if args.command == "install":
        asyncio.run(install(args.dsn))
    elif args.command == "enqueue":
        asyncio.run(enqueue(args.dsn, args.count, args.payload_bytes))
    else:
        asyncio.run(work(args.dsn, args.url, args.batch))


if __name__ == "__main__":
    main()
