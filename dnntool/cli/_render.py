"""Render reports as a rich table, JSON, CSV or Markdown."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass
class Column:
    """A report column: header, how to get the raw value of a row, and whether it is a number."""

    header: str
    get: Callable[[object], object]
    numeric: bool = False


def _fmt(v: object, numeric: bool) -> str:
    if numeric and isinstance(v, int):
        return f"{v:,}"
    if numeric and isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def render(fmt: str, columns: Sequence[Column], rows: Sequence[object], totals: Sequence[tuple[str, object]],
           title: str, data: dict) -> str:
    """The report as text in ``fmt`` (json renders ``data``; the others render rows and totals)."""
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\n")
        w.writerow([c.header for c in columns])
        for r in rows:
            w.writerow([c.get(r) for c in columns])
        return out.getvalue()
    if fmt == "markdown":
        lines = [f"**{title}**", "", "| " + " | ".join(c.header for c in columns) + " |",
                 "|" + "|".join("---:" if c.numeric else "---" for c in columns) + "|"]
        for r in rows:
            lines.append("| " + " | ".join(_fmt(c.get(r), c.numeric) for c in columns) + " |")
        lines.append("")
        lines += [f"- {k}: {_fmt(v, True)}" for k, v in totals]
        return "\n".join(lines) + "\n"
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False, pad_edge=False, box=None, header_style="bold")
    for c in columns:
        table.add_column(c.header, justify="right" if c.numeric else "left", no_wrap=True)
    for r in rows:
        table.add_row(*(_fmt(c.get(r), c.numeric) for c in columns))
    buf = io.StringIO()
    console = Console(file=buf, width=200 if not sys.stdout.isatty() else None, highlight=False,
                      force_terminal=sys.stdout.isatty(), color_system="auto" if sys.stdout.isatty() else None)
    console.print(title, soft_wrap=True)
    console.print(table)
    for k, v in totals:
        console.print(f"{k}: {_fmt(v, True)}")
    return buf.getvalue()
