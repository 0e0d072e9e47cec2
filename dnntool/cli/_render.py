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
    # A plain aligned table: fast for thousand-layer nets and stable in pipes (rich's table renderer
    # took ~0.3 s for ResNet-152); bold header only on a terminal.
    cells = [[c.header for c in columns]] + [[_fmt(c.get(r), c.numeric) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = [title]
    for k, row in enumerate(cells):
        parts = [v.rjust(w) if c.numeric else v.ljust(w) for v, w, c in zip(row, widths, columns, strict=True)]
        line = "  ".join(parts).rstrip()
        lines.append(f"\033[1m{line}\033[0m" if k == 0 and sys.stdout.isatty() else line)
    lines += [f"{k}: {_fmt(v, True)}" for k, v in totals]
    return "\n".join(lines) + "\n"
