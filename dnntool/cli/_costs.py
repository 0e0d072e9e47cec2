"""Shared body of ``param-count`` and ``flops``: render a stats report and apply ``--max``."""

from __future__ import annotations

import click

from dnntool.cli._render import Column, render


def _shape(r) -> str:
    from dnntool.tools.stats import fmt_shapes

    return fmt_shapes(r)


def emit_report(report, kind: str, fmt: str, limit: str | None, unit: str = "macs", quiet: bool = False) -> None:
    """Print ``report`` as a ``kind`` ("params" or "cost") report and enforce ``--max``."""
    from dnntool.errors import ThresholdExceeded
    from dnntool.tools.stats import human, parse_count

    max_value = parse_count(limit) if limit else None
    base = [Column("layer", lambda r: r.name), Column("type", lambda r: r.type),
            Column("output", _shape)]
    if kind == "params":
        total = report.params
        columns = [*base, Column("params", lambda r: r.params, True),
                   Column("stored", lambda r: r.stored, True),
                   Column("share %", lambda r: round(100.0 * r.params / total, 2) if total else 0.0, True)]
        totals = [("total learnable params", report.params), ("total stored (non-learnable) values", report.stored)]
        what, value = "learnable params", report.params
    else:
        total = getattr(report, unit)
        columns = [*base, Column("MACs", lambda r: r.macs, True), Column("FLOPs", lambda r: r.flops, True),
                   Column("activations", lambda r: r.activations, True),
                   Column("share %", lambda r: round(100.0 * getattr(r, unit) / total, 2) if total else 0.0, True)]
        totals = [("total MACs", report.macs), ("total FLOPs", report.flops),
                  ("total activations", report.activations)]
        if report.batch > 1:
            totals += [(f"MACs per image (batch {report.batch})", report.macs // report.batch),
                       (f"FLOPs per image (batch {report.batch})", report.flops // report.batch)]
        what, value = f"{'MACs' if unit == 'macs' else 'FLOPs'}", total
    title = f"{report.net or 'net'} ({report.source}, phase {report.phase}, batch {report.batch})"
    data = report.to_dict()
    if max_value is not None:
        data["limit"] = {"what": what, "max": max_value, "value": value, "exceeded": value > max_value}
    if report.unused_weights and not quiet:
        click.echo(f"note: the caffemodel has blobs for layers not in the net (ignored, as Caffe does):"
                   f" {', '.join(report.unused_weights)}", err=True)
    if not quiet:
        click.echo(render(fmt, columns, report.rows, totals, title, data), nl=False)
    if max_value is not None and value > max_value:
        raise ThresholdExceeded(
            f"{report.source}: total {what} {value:,} ({human(value)}) exceed the limit {max_value:,}"
            f" (--max {limit})"
        )
