"""Run relay's chaos scenarios outside pytest and print one summary line per scenario.

    .venv/bin/python -m tests.chaos --long

runs the long versions (more events, longer disruptions, relay's default lease and retry
schedule) in under 15 minutes and writes their figures to tests/chaos/RESULTS.md. Without
``--long`` it runs the fast versions (as pytest does) and writes nothing unless asked
(``--results PATH``). ``--only NAME`` (repeatable) picks scenarios; ``--details`` prints
every violation and note. Exit status 1 when any scenario found a violation.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

from tests.chaos.invariants import API_RSS_BOUND, MiB, Report
from tests.chaos.scenarios import SCENARIOS, run

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# Per scenario, so that the whole long run stays bounded (about 15 minutes at worst).
TIMEOUT = {False: 240.0, True: 300.0}
TOTAL_BUDGET = 15 * 60.0


def commit() -> str:
    def git(*args: str) -> str:
        try:
            result = subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
            )
        except OSError:  # no git on this machine
            return ""
        return result.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--", "relay", "migrations")
    return head + (" + uncommitted changes in relay/" if changed else "")


def duplicates_cell(report: Report) -> str:
    if not report.duplicates:
        return "0"
    causes = ", ".join(f"{n} {cause}" for cause, n in report.duplicate_causes.most_common())
    return f"{report.duplicates} ({causes})"


def write_results(path: Path, reports: list[Report], long: bool, started: datetime) -> None:
    date = started.strftime("%Y-%m-%d %H:%M UTC")
    head = commit()
    intro = (
        f"Written by `.venv/bin/python -m tests.chaos{' --long' if long else ''}` "
        "(tests/chaos/__main__.py). Every scenario runs relay's CLI processes with their "
        "default settings against a PostgreSQL of its own; tests/chaos/scenarios.py says "
        "what each does and what it sets beyond the defaults, tests/chaos/invariants.py "
        "what is checked. Delivered counts (event, healthy destination) pairs; duplicates "
        "are arrivals of an event at a destination that had already answered it 2xx, with "
        "the failure recorded before each; recovery runs from the end of the disruption "
        "(or of the load) until everything acknowledged before it was delivered and "
        f"recorded. The API's peak RSS must stay under {API_RSS_BOUND / MiB:.0f} MiB."
    )
    lines = ["# Chaos results", "", *textwrap.wrap(intro, 90), ""]
    lines += [
        "| scenario | acknowledged | delivered | lost | duplicates (cause) | 5xx | recovery "
        "| peak API RSS | event loop | violations | date | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        fivexx = ", ".join(f"{n}x {s}" for s, n in sorted(r.fivexx.items())) or "0"
        recovery = "never" if r.recovery is None else f"{r.recovery:.1f} s"
        violations = "; ".join(r.violations).replace("|", "/") if r.violations else "none"
        if len(violations) > 400:
            violations = violations[:400] + " ..."
        lines.append(
            f"| {r.scenario} | {r.acknowledged} | {r.delivered}/{r.expected} | {r.lost} "
            f"| {duplicates_cell(r)} | {fivexx} | {recovery} | {r.api_peak_rss / MiB:.0f} MiB "
            f"| {r.loop} | {violations} | {date} | {head} |"
        )
    lines += ["", "What each run recorded, and what its recovery time waited for:", ""]
    for r in reports:
        kept = [n for n in r.notes if n.startswith(NOTES)]
        lines.append(f"- **{r.scenario}**: " + "; ".join(kept))
    path.write_text("\n".join(lines) + "\n")


# The notes worth keeping in RESULTS.md (the rest are printed with --details).
NOTES = (
    "attempts by outcome",
    "last to recover",
    "dispatcher killed",
    "api down",
    "database down",
    "sessions terminated",
    "delivered by each",
    "ok destination latency",
    "slow connections",
    "publish latency",
)


async def main_async(args: argparse.Namespace) -> int:
    names = args.only or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"unknown scenarios {unknown}; known: {list(SCENARIOS)}", file=sys.stderr)
        return 2
    started = datetime.now(UTC)
    begun = time.monotonic()
    reports: list[Report] = []
    workdir = Path(tempfile.mkdtemp(prefix="relay-chaos-"))
    print(f"relay chaos, {'long' if args.long else 'fast'}; logs in {workdir}", flush=True)
    for name in names:
        left = TOTAL_BUDGET - (time.monotonic() - begun) if args.long else TIMEOUT[False]
        timeout = min(TIMEOUT[args.long], left)
        if timeout <= 30:
            print(f"{name}: skipped, the time budget is spent", flush=True)
            continue
        try:
            async with asyncio.timeout(timeout):
                report = await run(name, long=args.long, workdir=workdir / name)
        except TimeoutError:
            report = Report(name, violations=[f"did not finish within {timeout:.0f}s"])
        reports.append(report)
        print(report.details() if args.details else report.summary(), flush=True)
    print(f"total {time.monotonic() - begun:.0f}s", flush=True)
    results = args.results or (HERE / "RESULTS.md" if args.long else None)
    if results is not None:
        write_results(Path(results), reports, args.long, started)
        print(f"wrote {results}")
    return 1 if any(r.violations for r in reports) else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--long", action="store_true", help="the long versions (writes RESULTS.md)")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this scenario")
    parser.add_argument("--results", metavar="PATH", help="write the results table here")
    parser.add_argument("--details", action="store_true", help="print violations and notes")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
