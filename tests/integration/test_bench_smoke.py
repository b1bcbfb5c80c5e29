"""The benchmark scripts work (bench/run itself takes minutes and is never run here).

Each piece runs for a moment against the test's database: the baseline servers, the
receiver, the minimal delivery loop, the wrk script and the seeding/claim-cost helpers.
Nothing here times anything.
"""

from __future__ import annotations

import asyncio
import csv
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
    assert "SubPlan" in out, out  # the probe of attempts already written, per outcome
    retries = [line.strip() for line in out.splitlines() if "written again" in line]
    assert len(retries) == 4, out
    for line in retries:
        expected = "added 0 attempt rows" if line.startswith("new:") else "added 200 attempt rows"
        assert expected in line, out


@pytest.mark.slow
def test_record_cost_against_no_rollup_times_the_trigger_in_the_same_run() -> None:
    """--baseline no-rollup: relay's own recording on a twin database without the hourly
    rollup's triggers; the trigger's upsert is reported on its own."""
    result = subprocess.run(
        [sys.executable, str(BENCH / "record_cost.py"), "--quick", "--baseline", "no-rollup"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert out.count("new/old BEGIN..COMMIT: ") == 2, out
    assert out.count("rollup trigger's upsert") == 2, out
    retries = [line.strip() for line in out.splitlines() if "written again" in line]
    assert len(retries) == 4 and all("added 0 attempt rows" in line for line in retries), out


@pytest.mark.slow
def test_hot_row_bench_compares_the_rollup_with_none_and_one_shard(pg_server_url: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(BENCH / "limits_hot_row.py"),
            "--rollup",
            "--server",
            pg_server_url,
            "--seconds",
            "0.5",
            "--rounds",
            "1",
            "--events",
            "20000",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| 3 |")]
    assert len(rows) == 1 and rows[0].count("/s") == 3, result.stdout
    assert "rollup, one shard: rows of the rollup by shard: shard 0:" in result.stdout


def soak(database_url: str | None, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """bench/soak.py against the test's database (None: on a throwaway server of its
    own, --own-server), briefly, without a plot."""
    where = ["--dsn", database_url] if database_url else ["--own-server"]
    return subprocess.run(
        [
            sys.executable,
            str(BENCH / "soak.py"),
            "--quick",
            *where,
            "--out",
            str(out),
            "--no-plot",
            "--quiet",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=150,
    )


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


@pytest.mark.slow
def test_soak_quick_run_writes_its_samples(database_url: str, tmp_path: Path) -> None:
    """bench/soak.py (issue 19's soak): relay api and dispatch, the receiver, a fixed-rate
    load, a pinned snapshot, a backlog built first and retention set: it runs, and its CSV
    has a row per sample with the columns the plot and the analysis read."""
    result = soak(
        database_url,
        tmp_path,
        *("--duration", "6", "--rate", "50", "--sample-every", "2", "--tail", "20"),
        *("--pin", "2", "--pin-at", "2", "--pin-kind", "idle", "--backlog", "40"),
        *("--retention-minutes", "60"),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (samples,) = tmp_path.glob("soak-*[0-9].csv")
    columns, rows = read_csv(samples)
    for column in (
        "t_s",
        "phase",
        "pin_active",
        "published_per_s",
        "attempts_per_s",
        "delivered_per_s",
        "pending",
        "due_now",
        "outstanding_ok",
        "claim_mean_ms",
        "claim_exec_mean_ms",
        "claim_exec_calls_per_s",
        "rows_per_claim",
        "buffers_per_claimed_row",
        "deliveries_dead",
        "deliveries_live",
        "deliveries_hot_share",
        "attempts_total_mb",
        "event_keys_total_mb",
        "deliveries_partitions",
        "slices",
        "xmin_age_xids",
        "xmin_oldest_s",
        "dispatch_cpu_pct",
    ):
        assert column in columns, column
    assert any(c.startswith("idx_ix_deliveries_due") for c in columns), columns
    # Sizes are summed over the partitions (slices) of each table, relay.slices counted.
    assert all(float(row["attempts_total_mb"]) > 0 for row in rows)
    assert all(float(row["event_keys_total_mb"]) > 0 for row in rows)
    assert all(int(row["slices"]) > 1 for row in rows)
    phases = {row["phase"] for row in rows}
    assert {"build", "load"} <= phases, phases
    assert any(row["pin_active"] == "1" for row in rows)
    assert any(float(row["attempts_per_s"] or 0) > 0 for row in rows if row["phase"] == "load")
    (trace,) = tmp_path.glob("soak-*-trace.csv")
    assert read_csv(trace)[1], "no trace rows"
    (summary,) = tmp_path.glob("soak-*.md")
    text = summary.read_text()
    assert "during pin" in text
    # The claim's execution time in PostgreSQL needs pg_stat_statements loaded, which the
    # test's server usually has not: then the column is blank and the summary says why.
    exec_ms = [row["claim_exec_mean_ms"] for row in rows if row["phase"] == "load"]
    if "pg_stat_statements is not usable" in text:
        assert not any(exec_ms), exec_ms
    else:
        assert any(float(v) > 0 for v in exec_ms if v), exec_ms


@pytest.mark.slow
def test_soak_on_its_own_server_times_the_claim_in_postgresql(tmp_path: Path) -> None:
    """--own-server loads pg_stat_statements: each sample has the claim statement's mean
    execution time as PostgreSQL measures it beside the dispatcher's figure, and the
    summary has both."""
    result = soak(
        None,
        tmp_path,
        *("--duration", "6", "--rate", "50", "--sample-every", "2", "--tail", "20"),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (samples,) = tmp_path.glob("soak-*[0-9].csv")
    load = [row for row in read_csv(samples)[1] if row["phase"] == "load"]
    timed = [row for row in load if row["claim_exec_mean_ms"]]
    assert timed, load
    for row in timed:
        assert float(row["claim_exec_mean_ms"]) > 0
        assert float(row["claim_exec_calls_per_s"]) > 0
    (summary,) = tmp_path.glob("soak-*.md")
    text = summary.read_text()
    assert "| claim execution mean (ms, pg_stat_statements) |" in text, text
    assert "executing in PostgreSQL (pg_stat_statements)" in text, text
    assert "pg_stat_statements is not usable" not in text, text


@pytest.mark.slow
def test_soak_compares_a_backlog_with_a_live_stream(database_url: str, tmp_path: Path) -> None:
    """--compare-backlog: the same work as a backlog and as a stream, and their ratio."""
    result = soak(
        database_url,
        tmp_path,
        *("--compare-backlog", "--backlog", "200", "--destinations", "4"),
        *("--sample-every", "1"),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "backlog drain / live stream:" in result.stdout
    (samples,) = tmp_path.glob("soak-*[0-9].csv")
    phases = {row["phase"] for row in read_csv(samples)[1]}
    assert {"r0-backlog", "r0-stream"} <= phases, phases
