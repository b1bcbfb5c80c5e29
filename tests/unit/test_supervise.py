"""The supervisor: a crash is logged at once and the loop restarted with backoff; a loop
that stops making progress is reported stalled; waiting for work is not a stall."""

from __future__ import annotations

import asyncio

import pytest

from relay import supervise
from relay.supervise import Loop, Supervisor


async def test_a_crash_is_logged_with_its_traceback_and_the_loop_restarted(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervise, "FIRST_BACKOFF", 0.05)
    runs = 0

    async def flaky(loop: Loop) -> None:
        nonlocal runs
        runs += 1
        if runs <= 2:
            raise ValueError(f"crash {runs}")
        loop.beat()
        await asyncio.sleep(3600)

    supervisor = Supervisor("test")
    loop = supervisor.start("flaky", flaky, stall_after=10)
    await asyncio.sleep(0.01)
    # Logged the moment it happened, not at shutdown.
    assert [r.exc_info is not None for r in caplog.records] == [True]
    assert "the flaky loop crashed" in caplog.records[0].getMessage()
    assert supervisor.health() == {"flaky": "crashed"}
    await asyncio.sleep(0.3)  # 0.05 s, then 0.1 s of backoff
    assert (runs, loop.restarts, loop.last_error) == (3, 2, "ValueError: crash 2")
    assert supervisor.health() == {"flaky": "healthy"} and supervisor.healthy
    await supervisor.stop()
    assert not loop.running


async def test_no_progress_is_a_stall_but_waiting_for_work_is_not() -> None:
    release = asyncio.Event()

    async def stuck(loop: Loop) -> None:
        await release.wait()  # busy, not idle, and no beat
        await asyncio.sleep(3600)

    async def waiting(loop: Loop) -> None:
        with loop.idle():
            await asyncio.sleep(3600)

    supervisor = Supervisor("test")
    supervisor.start("stuck", stuck, stall_after=0.1)
    supervisor.start("waiting", waiting, stall_after=0.1)
    supervisor.start("unbounded", stuck)
    assert supervisor.healthy
    await asyncio.sleep(0.2)
    assert supervisor.health() == {"stuck": "stalled", "waiting": "healthy", "unbounded": "healthy"}
    supervisor.loops["stuck"].beat()
    assert supervisor.health()["stuck"] == "healthy"
    await supervisor.stop()


async def test_a_loop_that_returns_is_restarted_unless_draining(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervise, "FIRST_BACKOFF", 0.01)
    runs = 0

    async def returns(loop: Loop) -> None:
        nonlocal runs
        runs += 1
        if runs > 1:
            await asyncio.sleep(3600)

    supervisor = Supervisor("test")
    supervisor.start("returns", returns)
    await asyncio.sleep(0.1)
    assert runs == 2 and "returned; restarting it" in caplog.text
    supervisor.draining = True
    await supervisor.stop()
