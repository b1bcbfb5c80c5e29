"""Draw a soak run's CSV (bench/soak.py) as one PNG of stacked panels over time.

    bench/.venv/bin/python bench/soak_plot.py RUN.csv RUN-trace.csv RUN.png \\
        [--pin-start S --pin-end S] [--load-end S] [--title TEXT]

Runs in bench/.venv, where matplotlib is (bench/soak.py calls it); needs nothing else.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import math
from pathlib import Path
from typing import Any


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def column(rows: list[dict[str, str]], key: str) -> list[float]:
    out = []
    for row in rows:
        value = row.get(key, "")
        out.append(float(value) if value not in ("", None) else math.nan)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("csv", type=Path)
    parser.add_argument("trace", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--pin-start", type=float)
    parser.add_argument("--pin-end", type=float)
    parser.add_argument("--load-end", type=float)
    parser.add_argument("--title", default="relay soak")
    args = parser.parse_args()

    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")

    rows = read(args.csv)
    trace = read(args.trace)
    t = column(rows, "t_s")
    tt = column(trace, "t_s")
    # Index sizes of the hot table (relay.deliveries_active; relay.deliveries before 0008).
    index_columns = [k for k in (rows[0] if rows else {}) if k.startswith("idx_")]

    panels: list[tuple[str, list[tuple[str, list[float], list[float]]], str | None]] = [
        (
            "per second",
            [
                ("published events", t, column(rows, "published_per_s")),
                ("attempts", t, column(rows, "attempts_per_s")),
                ("delivered", t, column(rows, "delivered_per_s")),
                ("failed attempts", t, column(rows, "failed_attempts_per_s")),
            ],
            None,
        ),
        (
            "backlog (deliveries)",
            [
                ("pending", t, column(rows, "pending")),
                ("due now", t, column(rows, "due_now")),
                ("outstanding at 200-only dests (1 s)", tt, column(trace, "outstanding_ok")),
            ],
            None,
        ),
        (
            "claim",
            [
                ("claim mean ms", t, column(rows, "claim_mean_ms")),
                (
                    "claim execution mean ms (pg_stat_statements)",
                    t,
                    column(rows, "claim_exec_mean_ms"),
                ),
                ("claim p99 <= ms", t, column(rows, "claim_p99_le_ms")),
                ("deliveries buffers per claimed row", t, column(rows, "buffers_per_claimed_row")),
            ],
            "log",
        ),
        (
            "tuples",
            [
                ("deliveries dead", t, column(rows, "deliveries_dead")),
                ("deliveries live", t, column(rows, "deliveries_live")),
                ("events dead", t, column(rows, "events_dead")),
                ("attempts dead", t, column(rows, "attempts_dead")),
                ("event_keys dead", t, column(rows, "event_keys_dead")),
            ],
            None,
        ),
        (
            "size MB (all slices)",
            [
                ("deliveries total", t, column(rows, "deliveries_total_mb")),
                ("events total", t, column(rows, "events_total_mb")),
                ("attempts total", t, column(rows, "attempts_total_mb")),
                ("event_keys total", t, column(rows, "event_keys_total_mb")),
                *((k[4:-3], t, column(rows, k)) for k in index_columns),
            ],
            None,
        ),
        (
            "history slices",
            [
                ("slices (relay.slices)", t, column(rows, "slices")),
                (
                    "oldest slice's end, age min",
                    t,
                    [v / 60 for v in column(rows, "oldest_slice_end_age_s")],
                ),
            ],
            None,
        ),
        (
            "xmin horizon",
            [
                ("oldest snapshot s", t, column(rows, "xmin_oldest_s")),
                ("age, k transactions", t, [v / 1000 for v in column(rows, "xmin_age_xids")]),
                (
                    "oldest write transaction on the server s",
                    t,
                    column(rows, "oldest_writer_s_all_dbs"),
                ),
            ],
            None,
        ),
        (
            "CPU % of a core",
            [
                ("dispatch", t, column(rows, "dispatch_cpu_pct")),
                ("api", t, column(rows, "api_cpu_pct")),
                ("receiver", t, column(rows, "receiver_cpu_pct")),
                ("soak (load generator)", t, column(rows, "soak_cpu_pct")),
                ("PostgreSQL (this database)", t, column(rows, "postgres_cpu_pct")),
                ("the rest (kernel, PostgreSQL's own, others)", t, column(rows, "other_cpu_pct")),
                ("machine (200 = both cores)", t, column(rows, "machine_cpu_pct")),
            ],
            None,
        ),
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(12, 3 * len(panels)), sharex=True)
    for ax, (title, series, scale) in zip(axes, panels, strict=True):
        for label, xs, ys in series:
            if any(not math.isnan(y) for y in ys):
                ax.plot(xs, ys, label=label, linewidth=1.2)
        if args.pin_start is not None:
            ax.axvspan(args.pin_start, args.pin_end or max(t, default=0), color="red", alpha=0.1)
        if args.load_end is not None:
            ax.axvline(args.load_end, color="grey", linestyle="--", linewidth=0.8)
        if scale and ax.lines:
            ax.set_yscale(scale)
        ax.set_ylabel(title)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(loc="upper left", fontsize=8)
    axes[-1].set_xlabel("seconds (shaded: snapshot pinned; dashed: load ends)")
    fig.suptitle(args.title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(args.png, dpi=80)


if __name__ == "__main__":
    main()
