"""`relay listen`: a local webhook receiver for trying relay out (as `svix listen` and
`hookdeck listen` are for theirs).

It listens on a URL (by default the dev config's destination, http://127.0.0.1:8000/webhooks),
finds in relay's database the destinations that deliver there and their secrets, verifies
each delivery's signature in the destination's format (Standard Webhooks, or Outpost's
default mode) and prints the delivery. A verified delivery is answered 200, one that
fails verification 401 (so relay records it as a failed attempt and retries).
"""

from __future__ import annotations

import argparse
import hmac
import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from rich.console import Console
from rich.text import Text

from relay import terminal, webhook_formats
from relay.config import Settings

# Standard Webhooks' recommended tolerance for the timestamp header.
TOLERANCE_SECONDS = 5 * 60


@dataclass(frozen=True)
class Destination:
    """Where a secret comes from: a destination relay delivers to this URL, or --secret."""

    name: str
    mode: str
    secrets: tuple[str, ...]


@dataclass(frozen=True)
class Verdict:
    ok: bool
    why: str


def listen(args: argparse.Namespace, settings: Settings, database_url: str | None) -> int:
    url = args.url
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.port is None:
        raise SystemExit(f"relay: listen: {url!r} must be http://HOST:PORT/PATH")
    screen = terminal.console(sys.stdout)
    formats = webhook_formats.from_settings(settings.delivery)
    receiver = Receiver(url, settings, formats, database_url, args.secret, args.mode, screen)
    receiver.status = args.status
    app = web.Application()
    app.cleanup_ctx.append(receiver.lifecycle)
    app.router.add_route("*", "/{tail:.*}", receiver.handle)
    try:
        web.run_app(
            app,
            host=parts.hostname,
            port=parts.port,
            print=lambda _banner: receiver.ready(),
            access_log=None,
            handle_signals=True,
        )
    except OSError as exc:
        raise SystemExit(
            f"relay: listen: cannot listen on {parts.hostname}:{parts.port}: "
            f"{exc.strerror or exc}; is another receiver running there? (pass another URL)"
        ) from None
    return 0


class Receiver:
    def __init__(
        self,
        url: str,
        settings: Settings,
        formats: webhook_formats.Formats,
        database_url: str | None,
        secret: str | None,
        mode: str | None,
        screen: Console,
    ) -> None:
        self.url = url
        self.path = urlsplit(url).path or "/"
        self.settings = settings
        self.formats = formats
        self.database_url = database_url
        self.secret = secret
        self.mode = mode
        self.screen = screen
        self.status = 200
        self.engine: Any = None

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        if self.database_url and not self.secret:
            from relay.db.engine import create_engine

            self.engine = create_engine(self.database_url, pool_size=1)
        try:
            self.known = await self.destinations()
            yield
        finally:
            if self.engine is not None:
                await self.engine.dispose()

    async def destinations(self) -> list[Destination]:
        """The secrets to verify with: --secret, or those of every destination relay
        delivers to this URL (read afresh for each delivery: rotation, a new secret)."""
        if self.secret:
            mode = self.mode or self.formats.mode
            return [Destination("--secret", mode, (self.secret,))]
        if self.engine is None:
            return []
        from sqlalchemy import text

        query = text(
            "SELECT tenant_id, id, secret, previous_secret, previous_secret_invalid_at, "
            "signature_mode FROM relay.destinations "
            "WHERE rtrim(url, '/') = rtrim(:url, '/') AND deleted_at IS NULL "
            "ORDER BY tenant_id, id"
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query, {"url": self.url})).mappings().all()
        found = []
        for row in rows:
            secrets = [row["secret"]]
            until = row["previous_secret_invalid_at"]
            if row["previous_secret"] and (until is None or until.timestamp() > time.time()):
                secrets.append(row["previous_secret"])
            mode = self.mode or row["signature_mode"] or self.formats.mode
            found.append(Destination(f"{row['tenant_id']}/{row['id']}", mode, tuple(secrets)))
        return found

    def ready(self) -> None:
        """Once listening: where, which destination(s), and the secret(s)."""
        screen = self.screen
        screen.print(
            Text("relay listen: ", style="bold").append(
                f"receiving webhooks on {self.url}", style="bold green"
            )
        )
        if not self.known:
            if self.engine is None and not self.secret:
                screen.print(
                    "  no relay database and no --secret: deliveries are shown unverified",
                    style="yellow",
                    markup=False,
                )
            else:
                port = self.settings.server.port
                screen.print(
                    f"  no destination delivers to {self.url} yet. Add one in the config "
                    f'file (then restart relay):\n    [[tenants.destinations]]\n    id = "local"'
                    f'\n    url = "{self.url}"\n'
                    f"  or through the API:\n    curl -X POST http://127.0.0.1:{port}/api/v1/"
                    "tenants/TENANT/destinations -H 'Authorization: Bearer ADMIN_KEY' -d "
                    f'\'{{"type": "webhook", "topics": "*", "config": {{"url": "{self.url}"}}}}\'\n'
                    '  (loopback needs delivery.allow_private_networks = ["127.0.0.0/8"], as '
                    "in config/relay.toml). Its deliveries are verified as they come; or pass "
                    "--secret.",
                    style="yellow",
                    markup=False,
                )
        for dest in self.known:
            line = Text(f"  destination {dest.name} ({dest.mode} webhooks), secret ")
            line.append(dest.secrets[0], style="cyan")
            screen.print(line)
        screen.print("  waiting for deliveries (Ctrl+C to stop)", style="dim", markup=False)
        screen.file.flush()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            known = await self.destinations()
        except Exception as exc:  # the database went away: still show the delivery
            known = self.known
            self.screen.print(f"(could not read secrets: {exc})", style="yellow", markup=False)
        headers = {k.lower(): v for k, v in request.headers.items()}
        verdict = self.verify(known, headers, body)
        self.show(request, headers, body, verdict)
        if verdict.ok or not known:
            return web.Response(status=self.status, text="ok\n")
        return web.Response(status=401, text=f"signature not verified: {verdict.why}\n")

    def verify(self, known: list[Destination], headers: dict[str, str], body: bytes) -> Verdict:
        if not known:
            return Verdict(False, "no secret to verify with")
        reasons = []
        for dest in known:
            if dest.mode == "outpost":
                verdict = self.verify_outpost(dest, headers, body)
            else:
                verdict = self.verify_standard(dest, headers, body)
            if verdict.ok:
                return verdict
            reasons.append(verdict.why)
        return Verdict(False, "; ".join(reasons))

    def verify_standard(self, dest: Destination, headers: dict[str, str], body: bytes) -> Verdict:
        from relay import signing

        fmt = self.formats.standard
        names = [fmt.header_name(key) for key in ("id", "timestamp", "signature")]
        msg_id, stamp, signature = (headers.get(name) for name in names)
        if not (msg_id and stamp and signature):
            missing = ", ".join(
                n for n, v in zip(names, (msg_id, stamp, signature), strict=True) if not v
            )
            return Verdict(False, f"{dest.name}: no {missing} header (standard webhooks)")
        try:
            timestamp = int(stamp)
        except ValueError:
            return Verdict(False, f"{dest.name}: {names[1]} {stamp!r} is not a unix time")
        sent = signature.split()
        for secret in dest.secrets:
            expected = signing.standard_signature([secret], msg_id, timestamp, body)
            if any(hmac.compare_digest(expected, part) for part in sent):
                skew = abs(time.time() - timestamp)
                if skew > TOLERANCE_SECONDS:
                    return Verdict(False, f"{dest.name}: signed {skew:.0f}s away from now")
                return Verdict(True, f"standard webhooks, {dest.name}'s secret")
        return Verdict(False, f"{dest.name}: signature does not match its secret")

    def verify_outpost(self, dest: Destination, headers: dict[str, str], body: bytes) -> Verdict:
        fmt = self.formats.outpost
        name = fmt.header_name("signature")
        signature = headers.get(name) if name else None
        if not signature:
            return Verdict(False, f"{dest.name}: no {name or 'signature'} header (outpost)")
        event_id = headers.get(fmt.header_name("event-id") or "-", "")
        topic = headers.get(fmt.header_name("topic") or "-", "")
        stamp = headers.get(fmt.header_name("timestamp") or "-", "")
        try:
            now = datetime.fromisoformat(stamp).timestamp() if stamp else time.time()
        except ValueError:
            return Verdict(False, f"{dest.name}: timestamp {stamp!r} is not RFC 3339")
        candidates = [list(dest.secrets), *([s] for s in dest.secrets)]
        for secrets in candidates:
            expected = fmt.signature(secrets, event_id=event_id, topic=topic, now=now, body=body)
            if expected and hmac.compare_digest(expected, signature):
                return Verdict(True, f"outpost, {dest.name}'s secret")
        return Verdict(False, f"{dest.name}: signature does not match its secret")

    def show(
        self, request: web.Request, headers: dict[str, str], body: bytes, verdict: Verdict
    ) -> None:
        screen = self.screen
        fmt = self.formats
        event_id = headers.get(fmt.standard.header_name("id")) or headers.get(
            fmt.outpost.header_name("event-id") or "-"
        )
        topic = headers.get(fmt.outpost.header_name("topic") or "-") or headers.get(
            fmt.standard.prefix.lower() + "topic"
        )
        line = Text()
        line.append(time.strftime("%H:%M:%S "), style="dim")
        line.append(f"{request.method} {request.path_qs}", style="bold")
        line.append(f"  event {event_id or '-'}", style="cyan")
        line.append(f"  topic {topic or '-'}", style="cyan")
        if verdict.ok:
            line.append("  signature verified", style="bold green")
            line.append(f" ({verdict.why})", style="green")
        else:
            line.append("  signature NOT verified", style="bold red")
            line.append(f" ({verdict.why})", style="red")
        if request.path != self.path:
            line.append(f"  (not the path {self.path} relay listen was given)", style="yellow")
        screen.print(line)
        try:
            text = json.dumps(json.loads(body), indent=2, ensure_ascii=False)
        except ValueError:
            text = body.decode("utf-8", "replace")
        for row in text.splitlines() or [""]:
            screen.print(Text("  " + row))
        screen.file.flush()
