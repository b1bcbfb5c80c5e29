"""The dispatcher's door to every destination type: ``Deliverer.deliver(claimed)``.

- HTTP types (webhook, hookdeck) share one publisher per type over one client session,
  whose connection pool and SSRF-guarded resolver are the dispatcher's.
- Broker types get one publisher per destination, kept while it is used: its connection
  outlives a delivery. A claim carries the destination's config and credentials, and a
  publisher is kept for the values it was made with: once they change, the next delivery
  gets a new publisher and the old one is closed when its last delivery ends. Publishers
  idle for IDLE_SECONDS are closed; all are closed when the dispatcher stops.
- A broker delivery runs under the destination's timeout (delivery.timeout_seconds, or
  its own), connecting included: a broker that hangs fails its own deliveries with
  ``timeout`` and holds only its own destination's slots (the dispatcher's caps).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp

from relay import ssrf, webhook_formats
from relay.delivery import registry
from relay.delivery.base import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    TIMEOUT,
    UNAVAILABLE,
    Attempt,
    DeliveryContext,
    Outcome,
    Publisher,
    brief,
)

if TYPE_CHECKING:
    from relay.config import DeliverySettings
    from relay.db.outbox import Claimed

log = logging.getLogger(__name__)

# A destination's publisher unused this long is closed (its connection with it).
IDLE_SECONDS = 300.0
# How often idle publishers are looked for.
SWEEP_SECONDS = 30.0
# How long closing one publisher may take when relay stops or lets it go.
CLOSE_SECONDS = 5.0


@dataclass(slots=True)
class _Pooled:
    publisher: Publisher
    # The destination's config and credentials (as the claim carried them) it was made for.
    version: tuple[str, str]
    used: float
    active: int = 0
    retired: bool = False


class Deliverer:
    """Delivers claimed deliveries of every type; ``start()`` before, ``close()`` after."""

    def __init__(self, settings: DeliverySettings) -> None:
        self.settings = settings
        self.allowed_networks = ssrf.parse_networks(settings.allow_private_networks)
        # delivery.webhook_mode and [delivery.webhook], built once (delivery is hot).
        self.formats = webhook_formats.from_settings(settings)
        self.context: DeliveryContext | None = None
        self._resolver: ssrf.GuardedResolver | None = None
        self._shared: dict[str, Publisher] = {}
        self._pool: dict[tuple[str, str], _Pooled] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._sweep_at = 0.0
        self._unavailable_logged: set[str] = set()

    async def start(self) -> None:
        self._resolver = ssrf.GuardedResolver(self.allowed_networks)
        connector = aiohttp.TCPConnector(
            limit=self.settings.concurrency, ttl_dns_cache=60, resolver=self._resolver
        )
        # No cookie jar: a receiver's Set-Cookie must never ride along on later deliveries
        # (possibly another tenant's destination on the same host).
        session = aiohttp.ClientSession(
            connector=connector, trust_env=False, cookie_jar=aiohttp.DummyCookieJar()
        )
        self.context = DeliveryContext(self.settings, session, self.formats, self.allowed_networks)

    async def deliver(self, claimed: Claimed) -> Outcome:
        """One attempt of ``claimed``, whatever its type; never raises for a failure."""
        shared = self._shared.get(claimed.type)
        if shared is not None:
            return await shared.deliver(claimed)
        return await self._deliver_other(claimed)

    async def _deliver_other(self, claimed: Claimed) -> Outcome:
        assert self.context is not None, "Deliverer.start() first"
        try:
            provider = registry.provider(claimed.type)
        except (registry.Unavailable, KeyError) as exc:
            why = str(exc) if isinstance(exc, registry.Unavailable) else "unknown type"
            if claimed.type not in self._unavailable_logged:
                self._unavailable_logged.add(claimed.type)
                log.error("cannot deliver to %s destinations: %s", claimed.type, why)
            return Attempt().failed(UNAVAILABLE, why)
        if provider.shared:
            shared = self._shared[claimed.type] = provider.publisher(claimed, self.context)
            return await shared.deliver(claimed)

        attempt = Attempt()
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now >= self._sweep_at:
            self._sweep_at = now + SWEEP_SECONDS
            self._sweep(now)
        key = claimed.destination
        version = (claimed.config, claimed.credentials)
        entry = self._pool.get(key)
        if entry is None or entry.version != version:
            try:
                publisher = provider.publisher(claimed, self.context)
            except Exception as exc:  # values the type cannot use (validation let them by)
                return attempt.failed(INVALID_REQUEST, brief(exc))
            if entry is not None:
                self._retire(entry)
            entry = self._pool[key] = _Pooled(publisher, version, now)
        entry.used = now
        entry.active += 1
        seconds = claimed.timeout_seconds or self.settings.timeout_seconds
        try:
            async with asyncio.timeout(seconds):
                return await entry.publisher.deliver(claimed)
        except TimeoutError:
            return attempt.failed(TIMEOUT, f"no answer within {seconds:g} s")
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # relay is stopping (the attempt's own timeout is a TimeoutError)
            # Nobody cancelled this delivery: the client library cancelled one of its own
            # tasks under it (a connection it tore down). A failed attempt, retried on
            # the schedule, with a new publisher; not a delivery left to its lease.
            if self._pool.get(key) is entry:
                del self._pool[key]
                self._retire(entry)
            log.warning("a %s client cancelled a delivery of its own accord", claimed.type)
            return attempt.failed(INTERNAL_ERROR, f"the client library cancelled it: {brief(exc)}")
        except Exception:
            # A bug in the publisher: its state is unknown; the next delivery gets a new one.
            if self._pool.get(key) is entry:
                del self._pool[key]
                self._retire(entry)
            raise
        finally:
            entry.active -= 1
            if entry.retired and entry.active == 0:
                self._close_later(entry.publisher)

    def _retire(self, entry: _Pooled) -> None:
        """No new deliveries for it; closed once its last one ends."""
        entry.retired = True
        if entry.active == 0:
            self._close_later(entry.publisher)

    def _sweep(self, now: float) -> None:
        idle = [k for k, e in self._pool.items() if e.active == 0 and now - e.used > IDLE_SECONDS]
        for key in idle:
            self._retire(self._pool.pop(key))

    def _close_later(self, publisher: Publisher) -> None:
        task = asyncio.create_task(_close(publisher))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Close every publisher (each within CLOSE_SECONDS) and the HTTP session."""
        for entry in self._pool.values():
            self._retire(entry)
        self._pool.clear()
        for publisher in self._shared.values():
            self._close_later(publisher)
        self._shared.clear()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        if self.context is not None:
            await self.context.session.close()
        if self._resolver is not None:
            await self._resolver.close()


async def _close(publisher: Publisher) -> None:
    try:
        async with asyncio.timeout(CLOSE_SECONDS):
            await publisher.close()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a broker that is gone: nothing more to do
        log.info("closing a %s publisher failed: %s", type(publisher).__name__, brief(exc))
