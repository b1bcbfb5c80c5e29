"""bench/portal_pages.py works: a small run against the test server. Nothing is timed."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


async def test_portal_pages_bench_runs(pg_server_url: str, tmp_path: Path) -> None:
    out = tmp_path / "portal_pages.md"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "bench" / "portal_pages.py"),
        "--attempts",
        "2000",
        "--out",
        str(out),
        env={**os.environ, "RELAY_BENCH_DATABASE_URL": pg_server_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), 100)
    assert proc.returncode == 0, output.decode()[-3000:]
    report = out.read_text()
    for kind in ("## spread", "## hot"):
        assert kind in report
    for page in ("portal: destinations (health)", "portal: metrics, 7 days", "console: overview"):
        assert report.count(f"| {page} |") == 2, page
    # The charted pages against their baseline from relay.attempts alone, in each history.
    assert report.count("| metrics, 7 days |") == 2
    assert report.count("same run: portal: metrics, 24 h, attempts alone (baseline)") == 2
