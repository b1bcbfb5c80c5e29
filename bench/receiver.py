"""The webhook receiver every delivery benchmark sends to: answers 200 "ok", counts,
and remembers when each webhook-id arrived (for the latency benchmark).

    python bench/receiver.py --port N
    POST /hook                       -> 200; counted, its arrival time kept
    POST /hook/<name>[?fail=0.1]     -> 200, or 500 for that share of requests (every
                                        tenth for 0.1: deterministic); counted per name,
                                        arrival times not kept (soak runs send millions)
    GET /count -> {"count": n}     (2xx answers)
    GET /arrivals -> {"<webhook-id>": unix_time, ...}
    GET /stats -> {"count": n, "ok": {"<name>": n, ...}, "failed": {"<name>": n, ...}}
"""

from __future__ import annotations

import argparse
import time

import uvloop
from aiohttp import web


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    state = {"count": 0}
    arrivals: dict[str, float] = {}
    ok: dict[str, int] = {}
    failed: dict[str, int] = {}
    # Per name: failures owed so far (a running sum of the fail share), so that exactly
    # that share of its requests fails, spread evenly.
    owed: dict[str, float] = {}

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        state["count"] += 1
        webhook_id = request.headers.get("webhook-id")
        if webhook_id is not None:
            arrivals[webhook_id] = time.time()
        return web.Response(text="ok")

    async def named_hook(request: web.Request) -> web.Response:
        await request.read()
        name = request.match_info["name"]
        share = float(request.query.get("fail", "0"))
        debt = owed.get(name, 0.0) + share
        if debt >= 1.0:
            owed[name] = debt - 1.0
            failed[name] = failed.get(name, 0) + 1
            return web.Response(status=500, text="failing on purpose")
        owed[name] = debt
        ok[name] = ok.get(name, 0) + 1
        state["count"] += 1
        return web.Response(text="ok")

    async def count(_: web.Request) -> web.Response:
        return web.json_response(state)

    async def get_arrivals(_: web.Request) -> web.Response:
        return web.json_response(arrivals)

    async def stats(_: web.Request) -> web.Response:
        return web.json_response({"count": state["count"], "ok": ok, "failed": failed})

    async def reset(_: web.Request) -> web.Response:
        state["count"] = 0
        for table in (arrivals, ok, failed, owed):
            table.clear()
        return web.json_response(state)

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_post("/hook/{name}", named_hook)
    app.router.add_get("/count", count)
    app.router.add_get("/arrivals", get_arrivals)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
