"""One supervisor for a process's background loops.

Every long-running task (the dispatcher's claim loop, recorder, lease and LISTEN loops,
the router, housekeeping, the group-commit writers) runs under a Supervisor:

- an unexpected exception is logged with its traceback at once, not at shutdown;
- the loop is started again after a backoff (0.1 s doubling to 30 s, back to 0.1 s once
  it has run for a minute), so one bad row or one bug cannot stop the process's work;
- each loop keeps a heartbeat: it calls ``beat()`` when it has made progress (a claim,
  a batch written, a lease renewed) and marks the time it waits for work with ``idle()``.
  A loop is healthy when it is running and it either is idle or has made progress within
  its ``stall_after``. That is what `/healthz` reports and what a liveness probe checks:
  "each loop made progress recently", not "the port answers".

Handled failures (a lost database connection the loop retries by itself) are not
crashes: the loop keeps running, but without ``beat()`` it turns unhealthy once it has
gone ``stall_after`` seconds without progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

# Restart backoff: the first restart is almost immediate, a crash loop slows down.
FIRST_BACKOFF = 0.1
MAX_BACKOFF = 30.0
# A loop that ran this long before crashing starts again from the first backoff.
STABLE_AFTER = 60.0


@dataclass(eq=False)
class Loop:
    """One supervised loop's state: what health and metrics report."""

    name: str
    # Seconds without progress (while not idle) after which the loop counts as stalled;
    # None: only a crash makes it unhealthy.
    stall_after: float | None
    # Monotonic time of the last progress; wall-clock time of the same, for metrics.
    beat_at: float = field(default_factory=time.monotonic)
    last_success: float | None = None
    restarts: int = 0
    running: bool = False
    last_error: str | None = None
    _idle: int = 0

    def beat(self) -> None:
        """The loop made progress."""
        self.beat_at = time.monotonic()
        self.last_success = time.time()

    @contextlib.contextmanager
    def idle(self) -> Iterator[None]:
        """Around a wait for work: time spent here does not count as a stall."""
        self._idle += 1
        try:
            yield
        finally:
            self._idle -= 1
            # Waiting ended: the stall clock starts now, not at the last progress.
            self.beat_at = max(self.beat_at, time.monotonic())

    @property
    def is_idle(self) -> bool:
        return self._idle > 0

    def status(self, now: float | None = None) -> str:
        """healthy | crashed (waiting to restart) | stalled."""
        if not self.running:
            return "crashed"
        now = time.monotonic() if now is None else now
        if self.stall_after is not None and not self.is_idle:
            if now - self.beat_at > self.stall_after:
                return "stalled"
        return "healthy"


class Supervisor:
    """Starts loops, restarts them when they die, stops them all."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.loops: dict[str, Loop] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # Set when the owner winds down: a loop that returns now has finished its work
        # (the claim loop stops claiming), it did not die.
        self.draining = False

    def start(
        self,
        name: str,
        run: Callable[[Loop], Awaitable[None]],
        *,
        stall_after: float | None = None,
    ) -> Loop:
        """Run ``run(loop)`` until stopped, restarting it whenever it ends."""
        # Running from now on: the task starts at the next turn of the event loop.
        loop = Loop(name, stall_after, running=True)
        self.loops[name] = loop
        self._tasks[name] = asyncio.create_task(self._keep(loop, run), name=f"relay-{name}")
        return loop

    async def _keep(self, loop: Loop, run: Callable[[Loop], Awaitable[None]]) -> None:
        backoff = FIRST_BACKOFF
        while True:
            started = time.monotonic()
            loop.running = True
            loop.beat_at = started
            try:
                await run(loop)
            except asyncio.CancelledError:
                loop.running = False
                raise
            except Exception as exc:
                loop.last_error = f"{type(exc).__name__}: {exc}"[:300]
                log.exception("%s: the %s loop crashed; restarting it", self.owner, loop.name)
            else:
                if self.draining:
                    loop.running = False
                    return
                loop.last_error = "returned"
                log.error("%s: the %s loop returned; restarting it", self.owner, loop.name)
            loop.running = False
            loop.restarts += 1
            if time.monotonic() - started >= STABLE_AFTER:
                backoff = FIRST_BACKOFF
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    def task(self, name: str) -> asyncio.Task[None]:
        return self._tasks[name]

    async def stop(self, *names: str) -> None:
        """Cancel the named loops (all, if none are named) and wait for them."""
        self.draining = True
        tasks = [self._tasks[n] for n in names] if names else list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def health(self) -> dict[str, str]:
        now = time.monotonic()
        return {name: loop.status(now) for name, loop in self.loops.items()}

    @property
    def healthy(self) -> bool:
        return all(status == "healthy" for status in self.health().values())
