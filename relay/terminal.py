"""What the CLI prints for people: aligned tables, colour on a terminal, plain text when
piped (rich decides by whether the stream is a terminal, and honours NO_COLOR)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

# Columns whose values are ratios (0..1), shown as percentages.
RATIOS = ("success_rate_1h",)


def console(out: TextIO) -> Console:
    """A console on ``out``: on a terminal its width and colours; piped, no colour and no
    wrapping (a line per row, for grep and awk)."""
    terminal = out.isatty()
    return Console(
        file=out,
        width=None if terminal else 100_000,
        highlight=False,
        soft_wrap=not terminal,
        emoji=False,
    )


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> Table | Text:
    """Rows as an aligned table, or "(none)"."""
    if not rows:
        return Text("  (none)", style="dim")
    grid = Table(box=None, padding=(0, 2, 0, 0), header_style="bold", pad_edge=False)
    grid.add_column("", width=0, no_wrap=True)  # the indent of a section's rows
    for column in columns:
        numeric = any(_number(row.get(column)) for row in rows)
        grid.add_column(column, justify="right" if numeric else "left", no_wrap=True)
    for row in rows:
        grid.add_row("", *(cell(row.get(column), column) for column in columns))
    return grid


def _number(value: Any) -> bool:
    return isinstance(value, (int, float, Decimal)) and not isinstance(value, bool)


def cell(value: Any, column: str = "") -> Text:
    if isinstance(value, Decimal):
        value = float(value)
    if value is None:
        return Text("-", style="dim")
    if isinstance(value, bool):
        return Text("yes", style="green") if value else Text("no", style="red")
    if column in RATIOS and isinstance(value, (int, float)):
        style = "green" if value >= 0.99 else "yellow" if value >= 0.9 else "red"
        return Text(f"{value:.1%}", style=style)
    if isinstance(value, datetime):
        return Text(value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z")
    if isinstance(value, timedelta):
        return Text(str(value).split(".")[0])
    if isinstance(value, float):
        return Text(f"{value:g}")
    return Text(str(value))


class Progress:
    """Progress of a long operation over a known total: a live bar with rate and ETA on a
    terminal, a line per step with the same figures when piped."""

    def __init__(self, out: TextIO, description: str, total: int, unit: str) -> None:
        self.out = out
        self.description = description
        self.total = total
        self.unit = unit
        self.started = time.monotonic()
        self._bar: Any = None
        if out.isatty() and total:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            self._bar = Bar(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TimeElapsedColumn(),
                console=console(out),
                transient=False,
            )
            self._task = self._bar.add_task(description, total=total, rate="")
            self._bar.start()

    def update(self, done: int) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = done / elapsed
        if self._bar is not None:
            self._bar.update(self._task, completed=done, rate=f"{rate:,.0f} {self.unit}/s")
            return
        left = max(self.total - done, 0)
        eta = f"{timedelta(seconds=round(left / rate))}" if rate > 0 else "?"
        share = f" ({done / self.total:.0%})" if self.total else ""
        self.out.write(
            f"{self.description} {done}/{self.total}{share}, {rate:,.0f} {self.unit}/s, ETA {eta}\n"
        )
        self.out.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
