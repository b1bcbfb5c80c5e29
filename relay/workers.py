"""More than one HTTP process on one port: `server.workers` (or `RELAY_WORKERS`).

One Python process uses one core at most. Where that is the limit (more cores), more
processes help; on the 2-core bench machine they gain little or nothing (see
bench/RESULTS.md). With ``workers = N`` the process started by the
user runs N-1 copies of itself, all listening on the same port with SO_REUSEPORT, so the
kernel spreads connections over them. Each copy is an ordinary relay process: its own
pool, group commit and (for ``serve``) dispatcher; relay never assumes it is alone, so
nothing else changes.

The first process starts the copies once it is up (schema migrated, config synced), so
they never race it. It restarts a copy that dies, and on SIGTERM/SIGINT it stops them
all (each finishes its in-flight work) before it exits. A copy whose parent disappears
(kill -9) stops by itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence

from aiohttp import web

from relay.appkeys import METRICS
from relay.supervise import Loop, Supervisor

log = logging.getLogger(__name__)

# Set in the copies: which one (1..N-1), and whose.
WORKER_ENV = "RELAY_WORKER"
PARENT_ENV = "RELAY_WORKER_PARENT"


def is_copy() -> bool:
    return WORKER_ENV in os.environ


class Workers:
    """The N-1 copies of this process, started with the same arguments."""

    def __init__(
        self, count: int, argv: Sequence[str], database_url: str, stop_timeout: float
    ) -> None:
        self.count = count
        self.argv = list(argv)
        self.stop_timeout = stop_timeout
        # The copies use the database this process chose (the embedded server it started
        # stays up until this process, which waits for them, exits).
        self.env = {**os.environ, "RELAY_DATABASE_URL": database_url, PARENT_ENV: str(os.getpid())}
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    def _start(self, number: int) -> None:
        env = {**self.env, WORKER_ENV: str(number)}
        self.processes[number] = subprocess.Popen(
            [sys.executable, "-m", "relay", *self.argv], env=env
        )

    async def run(self, app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx, last in line: the copies start once this process is up (the schema
        migrated, the config synced), are restarted when they die, and are stopped, and
        waited for, before this process stops its own parts."""
        for number in range(1, self.count + 1):
            self._start(number)
        supervisor = Supervisor("workers")
        app[METRICS].supervisors.append(supervisor)
        supervisor.start("watch", self._watch)
        try:
            yield
        finally:
            await supervisor.stop()
            await asyncio.to_thread(self._stop)

    async def _watch(self, loop: Loop) -> None:
        while True:
            with loop.idle():
                await asyncio.sleep(1)
            for number, process in list(self.processes.items()):
                if process.poll() is not None:
                    log.warning(
                        "worker %d exited with %s; starting it again", number, process.returncode
                    )
                    self._start(number)

    def _stop(self) -> None:
        """SIGTERM to every copy, then wait (each finishes its in-flight work)."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for number, process in self.processes.items():
            try:
                process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                log.warning("worker %d did not stop in %ss; killing it", number, self.stop_timeout)
                process.kill()
                process.wait()


async def orphan_guard(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx for a copy: stop (as on SIGTERM) once the parent is gone."""
    parent = int(os.environ.get(PARENT_ENV, "0"))

    async def watch(loop: Loop) -> None:
        while True:
            with loop.idle():
                await asyncio.sleep(1)
            if os.getppid() != parent:
                log.warning("worker's parent %d is gone; stopping", parent)
                os.kill(os.getpid(), signal.SIGTERM)
                with loop.idle():
                    await asyncio.sleep(3600)  # until SIGTERM's shutdown stops us

    supervisor = Supervisor("worker")
    app[METRICS].supervisors.append(supervisor)
    supervisor.start("orphan-guard", watch)
    try:
        yield
    finally:
        await supervisor.stop()
