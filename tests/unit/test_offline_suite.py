"""The suite downloads nothing while it runs (issue 21): what it needs beyond the test
extra (outpost-sdk 0.1.0) is installed at install time, by the README's test command
and .ci/run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# pip started from Python: a "pip" item followed by an "install" or "download" one.
PIP = re.compile(r"""["']pip["']\s*,\s*["'](install|download)["']""")
INSTALL = "pip install --no-deps --target .venv/outpost-sdk-0.1.0 outpost-sdk==0.1.0"


def test_no_test_runs_pip() -> None:
    found = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "tests").rglob("*.py")
        if PIP.search(path.read_text())
    ]
    assert not found, f"these run pip during the tests (install at install time): {found}"


def test_the_install_step_is_in_the_readme_and_ci() -> None:
    assert INSTALL in (ROOT / "README.md").read_text()
    assert INSTALL in (ROOT / ".ci" / "run").read_text()
