"""The fast chaos scenarios (tests/chaos/scenarios.py), one test each.

Each starts its own PostgreSQL and relay's CLI processes, runs a few hundred events
through a disruption and checks the invariants of tests/chaos/invariants.py. A failure
prints the scenario's one-line summary, each violation, and what relay's logs said.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.scenarios import SCENARIOS, run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_scenario(name: str, tmp_path: Path) -> None:
    report = await run(name, long=False, workdir=tmp_path)
    print(report.details())
    if report.violations:
        pytest.fail(report.details(), pytrace=False)
