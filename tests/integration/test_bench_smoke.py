"""The benchmark scripts work (bench/run itself takes minutes and is never run here).

Each piece runs for a moment against the test's database: the baseline servers, the
receiver, the minimal delivery loop, the wrk script and the seeding/claim-cost helpers.
Nothing here times anything.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import run_all  # noqa: E402


@pytest.fixture
def spawn(database_url: str) -> Iterator[Any]:
    """Start bench processes; they stop before the test's database is dropped."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> tuple[subprocess.Popen[bytes], int]:
        port = run_all.free_port()
        proc = subprocess.Popen([sys.executable, *args, "--port", str(port)])
        procs.append(proc)
        run_all.wait_port(port, proc, timeout=20)
        return proc, port

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


async def test_baseline_servers_answer_202_and_the_naive_one_stores(
    spawn: Any, http: Any, db: Any, database_url: str
) -> None:
    await run_all.seed_relay(database_url, 9, pending=0)  # the tenant and destination
    _, trivial = spawn(str(BENCH / "servers.py"), "trivial")
    _, naive = spawn(str(BENCH / "servers.py"), "naive", "--dsn", database_url)
    body = {"tenant_id": "bench", "topic": "order.created", "data": {"n": 1}}
    for port in (trivial, naive):
        async with http.post(f"http://127.0.0.1:{port}/api/v1/publish", json=body) as resp:
            assert resp.status == 202
    assert await db.fetchval("SELECT count(*) FROM relay.events WHERE tenant_id = 'bench'") == 1
    assert await db.fetchval("SELECT count(*) FROM relay.deliveries") == 1


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
async def test_wrk_script_reports_durable_answers(spawn: Any) -> None:
    _, port = spawn(str(BENCH / "servers.py"), "trivial")
    result = await asyncio.to_thread(run_all.wrk, port, 1, 4)
    assert result["ok"] > 0 and result["non2xx"] == 0
    assert result["p99_ms"] >= result["p50_ms"] > 0


async def test_minimal_loop_drains_to_the_receiver(
    spawn: Any, http: Any, db: Any, database_url: str
) -> None:
    await db.execute(
        "CREATE TABLE bench_jobs (id bigserial PRIMARY KEY, "
        "status text NOT NULL DEFAULT 'pending', payload text NOT NULL)"
    )
    await db.execute("INSERT INTO bench_jobs (payload) SELECT '{}' FROM generate_series(1, 30)")
    _, receiver = spawn(str(BENCH / "receiver.py"))
    loop = await asyncio.create_subprocess_exec(
        sys.executable,
        str(BENCH / "minimal_loop.py"),
        "--dsn",
        database_url,
        "--url",
        f"http://127.0.0.1:{receiver}/hook",
        "--batch",
        "7",
    )
    assert await asyncio.wait_for(loop.wait(), 20) == 0
    assert await db.fetchval("SELECT count(*) FROM bench_jobs WHERE status = 'done'") == 30
    assert await run_all.receiver_count(http, receiver) == 30


async def test_seeding_gives_history_and_claimable_backlog(db: Any, database_url: str) -> None:
    await run_all.seed_relay(database_url, 9, pending=50, delivered=20)
    counts = dict(await db.fetch("SELECT status, count(*) FROM relay.deliveries GROUP BY status"))
    assert counts == {"pending": 50, "delivered": 20}
    assert await db.fetchval("SELECT count(*) FROM relay.attempts") == 20
    # The claim-cost probe rolls back: the backlog is still there afterwards.
    (samples,) = await run_all.claim_cost([database_url], samples=2)
    assert len(samples) == 2
    assert await db.fetchval("SELECT count(*) FROM relay.deliveries WHERE status = 'pending'") == 50


def test_profile_summary_groups_samples_by_package(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(run_all, "OUT", tmp_path)
    (tmp_path / "p.folded").write_text(
        "main (relay/cli.py:1);deliver (relay/delivery.py:5);post (aiohttp/client.py:9) 3\n"
        "main (relay/cli.py:1);claim (relay/db/outbox.py:7) 1\n"
    )
    summary = run_all.summarize_profile("p")
    assert "| aiohttp | 75% |" in summary and "| relay | 25% |" in summary


@pytest.mark.slow
def test_cpu_cost_drains_and_reports_per_delivery() -> None:
    """bench/cpu_cost.py, the experiment tool the analysis quotes: a tiny drain of each."""
    result = subprocess.run(
        [sys.executable, str(BENCH / "cpu_cost.py"), "delivery", "--rounds", "1", "--total", "300"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    for worker in ("relay", "loop"):
        reports = [line for line in lines if line.startswith(f"round 0 {worker} ")]
        assert len(reports) == 1 and "µs/delivery" in reports[0], result.stdout
    assert any("WAL records per delivery" in line for line in lines)


@pytest.mark.slow
def test_record_cost_quick_run_compares_both_and_the_retry_adds_nothing() -> None:
    """bench/record_cost.py --quick, the analysis's tool for what idempotent recording
    costs: both variants are timed at both history sizes, and a batch written twice adds
    attempt rows only with the old statement."""
    result = subprocess.run(
        [sys.executable, str(BENCH / "record_cost.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    for label in ("BEGIN..record_outcomes", "BEGIN..COMMIT"):
        assert out.count(f"new/old {label}: ") == 2, out
    assert "Anti Join" in out, out
    retries = [line.strip() for line in out.splitlines() if "written again" in line]
    assert len(retries) == 4, out
    for line in retries:
        expected = "added 0 attempt rows" if line.startswith("new:") else "added 200 attempt rows"
        assert expected in line, out
