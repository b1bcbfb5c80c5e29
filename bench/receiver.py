"""The webhook receiver every delivery benchmark sends to: answers 200 "ok", counts,
and remembers when each webhook-id arrived (for the latency benchmark).

    python bench/receiver.py --port N
    GET /count -> {"count": n}     GET /arrivals -> {"<webhook-id>": unix_time, ...}
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

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        state["count"] += 1
        webhook_id = request.headers.get("webhook-id")
        if webhook_id is not None:
            arrivals[webhook_id] = time.time()
        return web.Response(text="ok")

    async def count(_: web.Request) -> web.Response:
        return web.json_response(state)

    async def get_arrivals(_: web.Request) -> web.Response:
        return web.json_response(arrivals)

    async def reset(_: web.Request) -> web.Response:
        state["count"] = 0
        arrivals.clear()
        return web.json_response(state)

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/count", count)
    app.router.add_get("/arrivals", get_arrivals)
    app.router.add_post("/reset", reset)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
