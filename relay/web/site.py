"""Mounting the portal and the console on relay's application."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

from relay.web import console, pages, portal

STATIC = Path(__file__).parent / "static"


def _area(routes: web.RouteTableDef, area_middleware: Middleware) -> web.Application:
    app = web.Application(
        middlewares=[pages.security_headers, pages.html_errors, pages.refuse_nul, area_middleware]
    )
    pages.environment(app)
    app.add_routes(routes)
    app.router.add_static("/static", STATIC)
    return app


def setup(app: web.Application) -> None:
    portal_app = _area(portal.routes, portal.portal_session)
    app.add_subapp("/portal", portal_app)
    console_app = _area(console.routes, console.console_session)
    console_app[pages.ON_LOGIN] = "/console/login"
    console_app.cleanup_ctx.append(console.replay_jobs)
    console_app.on_shutdown.append(console.stop_replays)
    app.add_subapp("/console", console_app)
    app.router.add_get("/", _home)


async def _home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/console/")
