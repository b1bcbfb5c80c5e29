"""Baseline HTTP servers for the publish benchmark, each run as its own process.

    python bench/servers.py trivial --port N            # 202 without touching the database
    python bench/servers.py naive --port N --dsn URL    # one transaction per request

The naive outbox does what a first version would: parse the JSON, then in one
transaction per request insert the event and its delivery row with asyncpg, and answer
202 after the commit. Both use uvloop, as `relay api` does.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import uuid

import asyncpg
import uvloop
from aiohttp import web


async def trivial(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"id": "x"}, status=202)


def naive_app(dsn: str) -> web.Application:
    app = web.Application()

    async def startup(app: web.Application) -> None:
        app["pool"] = await asyncpg.create_pool(dsn, min_size=10, max_size=10)

    async def cleanup(app: web.Application) -> None:
        await app["pool"].close()

    async def publish(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        event_id = body.get("id") or str(uuid.uuid4())
        async with request.app["pool"].acquire() as conn, conn.transaction():
            seq = await conn.fetchval(
                "INSERT INTO relay.events (tenant_id, id, topic, data) "
                "VALUES ($1, $2, $3, $4::json) RETURNING seq",
                body["tenant_id"],
                event_id,
                body["topic"],
                json.dumps(body["data"]),
            )
            await conn.execute(
                "INSERT INTO relay.deliveries (event_seq, tenant_id, destination_id) "
                "VALUES ($1, $2, $3)",
                seq,
                body["tenant_id"],
                "receiver",
            )
        return web.json_response({"id": event_id}, status=202)

    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
    app.router.add_post("/api/v1/publish", publish)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["trivial", "naive"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dsn")
    # N processes on the port (SO_REUSEPORT), as relay's server.workers: the fair ceiling
    # for a relay that runs that many.
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()
    copies = []
    if args.processes > 1:
        argv = [a for a in sys.argv[1:] if a not in ("--processes", str(args.processes))]
        copies = [
            subprocess.Popen([sys.executable, __file__, *argv, "--processes", "0"])
            for _ in range(args.processes - 1)
        ]
    if args.kind == "trivial":
        app = web.Application()
        app.router.add_post("/api/v1/publish", trivial)
    else:
        app = naive_app(args.dsn)
    uvloop.install()
    try:
        web.run_app(
            app,
            host="127.0.0.1",
            port=args.port,
            reuse_port=args.processes != 1 or None,
            print=None,
            access_log=None,
        )
    finally:
        for copy in copies:
            copy.terminate()
            copy.wait()


if __name__ == "__main__":
    main()
