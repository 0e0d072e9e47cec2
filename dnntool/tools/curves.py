"""Training curves drawn: one SVG of panels (one per series, one line per run), a self-contained
HTML page around it, or a PNG through matplotlib. The SVG and HTML are computed here, with no
dependency and no network; the same curves give the same bytes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from dnntool.errors import DnnToolError, UsageError
from dnntool.tools.plotlog import LogRun, Series

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]
FONT = "'Liberation Sans', Arial, Helvetica, sans-serif"
W, H, COLS = 440, 260, 2  # panel size, panels per row
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 30, 40  # plot margins inside a panel
MARKERS = 80  # series with at most this many points get hoverable point markers
FORMATS = {".html": "html", ".htm": "html", ".svg": "svg", ".png": "png"}


def format_of(path: str) -> str:
    """The output format named by a file's suffix."""
    suffix = "." + path.rsplit(".", 1)[-1].lower() if "." in path else ""
    if suffix not in FORMATS:
        raise UsageError(f"cannot tell the output format of '{path}' from its suffix (expected .html, .svg or .png)")
    return FORMATS[suffix]


def num(v: float) -> str:
    s = f"{v:.1f}"
    return s[:-2] if s.endswith(".0") else s


def label(v: float) -> str:
    """A tick or value label: short, exact enough (6 significant digits at most)."""
    return f"{v:.6g}"


def ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round (1, 2, 5 x 10^k) tick values covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9)
    return [round(k * step, 12) for k in range(first, math.floor(hi / step + 1e-9) + 1)]


def _span(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(finite), max(finite)
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        return lo - pad, hi + pad
    pad = (hi - lo) * 0.04
    return lo - pad, hi + pad


def colours(runs: Sequence[str]) -> dict[str, str]:
    return {r: PALETTE[i % len(PALETTE)] for i, r in enumerate(runs)}


def panels(curves: Sequence[Series]) -> list[tuple[str, str]]:
    return list(dict.fromkeys((c.phase, c.name) for c in curves))


def title_of(phase: str, name: str) -> str:
    return "learning rate" if (phase, name) == ("train", "lr") else f"{phase} {name}"


def _panel(curves: list[Series], phase: str, name: str, xlabel: str, colour: dict[str, str], ox: int, oy: int) -> list[str]:
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    xlo, xhi = _span([x for c in curves for x, _ in c.points])
    if all(x >= 0 for c in curves for x, _ in c.points):
        xlo = max(xlo, 0.0)
    ylo, yhi = _span([y for c in curves for _, y in c.points])

    def sx(x: float) -> float:
        return ox + LEFT + (x - xlo) / (xhi - xlo) * pw

    def sy(y: float) -> float:
        return oy + TOP + (yhi - y) / (yhi - ylo) * ph

    out = [f'<g class="panel" data-series="{escape(phase)}:{escape(name)}">',
           f'<text x="{ox + LEFT}" y="{oy + 18}" font-weight="bold">{escape(title_of(phase, name))}</text>',
           f'<rect x="{ox + LEFT}" y="{oy + TOP}" width="{pw}" height="{ph}" fill="#fff" stroke="#c8ccd2"/>']
    for t in ticks(xlo, xhi):
        x = num(sx(t))
        out.append(f'<line x1="{x}" y1="{oy + TOP}" x2="{x}" y2="{oy + TOP + ph}" stroke="#eceef1"/>')
        out.append(f'<text x="{x}" y="{oy + TOP + ph + 14}" text-anchor="middle" fill="#555">{label(t)}</text>')
    for t in ticks(ylo, yhi):
        y = num(sy(t))
        out.append(f'<line x1="{ox + LEFT}" y1="{y}" x2="{ox + LEFT + pw}" y2="{y}" stroke="#eceef1"/>')
        out.append(f'<text x="{ox + LEFT - 5}" y="{y}" text-anchor="end" dominant-baseline="middle"'
                   f' fill="#555">{label(t)}</text>')
    out.append(f'<text x="{ox + LEFT + pw / 2:g}" y="{oy + H - 6}" text-anchor="middle" fill="#555">'
               f'{escape(xlabel)}</text>')
    for c in curves:
        col = colour[c.run]
        out.append(f'<g class="curve" data-run="{escape(c.run)}"><title>{escape(c.run)}</title>')
        for part in _finite_runs(c.points):
            d = " ".join(f"{num(sx(x))},{num(sy(y))}" for x, y in part)
            out.append(f'<polyline points="{d}" fill="none" stroke="{col}" stroke-width="1.6"/>')
        if len(c.points) <= MARKERS:
            for x, y in c.points:
                if math.isfinite(y):
                    out.append(f'<circle cx="{num(sx(x))}" cy="{num(sy(y))}" r="2.6" fill="{col}"><title>'
                               f'{escape(c.run)}: {label(x)}, {escape(name)} = {label(y)}</title></circle>')
        out.append("</g>")
    out.append("</g>")
    return out


def _finite_runs(points: list[tuple[float, float]]) -> list[list[tuple[float, float]]]:
    """The points split where a value is NaN or infinite (a diverged loss): lines break there."""
    parts: list[list[tuple[float, float]]] = [[]]
    for p in points:
        if math.isfinite(p[1]):
            parts[-1].append(p)
        elif parts[-1]:
            parts.append([])
    return [p for p in parts if p]


def render_svg(curves: Sequence[Series], runs: Sequence[str], x: str = "iters") -> str:
    """One SVG: a legend (a colour per run) above a grid of panels."""
    if not curves:
        raise DnnToolError("nothing to plot: no series has a value in these logs")
    colour = colours(runs)
    keys = panels(curves)
    rows = math.ceil(len(keys) / COLS)
    legend_h = 24 + 18 * math.ceil(len(runs) / 3)
    width, height = COLS * W, legend_h + rows * H
    xlabel = "iterations" if x == "iters" else "seconds"
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
           f' viewBox="0 0 {width} {height}" font-family="{FONT}" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="#fafbfc"/>', '<g class="legend">']
    for i, run in enumerate(runs):
        lx, ly = 16 + (i % 3) * (width // 3), 18 + 18 * (i // 3)
        out.append(f'<rect x="{lx}" y="{ly - 9}" width="18" height="4" fill="{colour[run]}"/>'
                   f'<text x="{lx + 24}" y="{ly - 3}">{escape(run)}</text>')
    out.append("</g>")
    for k, (phase, name) in enumerate(keys):
        mine = [c for c in curves if (c.phase, c.name) == (phase, name)]
        out += _panel(mine, phase, name, xlabel, colour, (k % COLS) * W, legend_h + (k // COLS) * H)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def render_html(curves: Sequence[Series], runs: Sequence[LogRun], x: str = "iters") -> str:
    """A self-contained page: the SVG inline and a table of each run's last values."""
    names = [r.name for r in runs]
    rows = []
    for run in runs:
        last_train = next((r for r in reversed(run.records) if r.phase == "train"), None)
        last_test = next((r for r in reversed(run.records) if r.phase == "test"), None)
        tests = ", ".join(f"{k} = {label(v)}" for k, v in (last_test.values if last_test else {}).items())
        rows.append(f"<tr><td>{escape(run.name)}</td><td>{escape(run.path)}</td><td>{run.format}</td>"
                    f"<td>{last_train.iteration if last_train else ''}</td>"
                    f"<td>{label(last_train.values['loss']) if last_train and 'loss' in last_train.values else ''}</td>"
                    f"<td>{escape(tests)}</td></tr>")
    title = "Training curves: " + ", ".join(names)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{escape(title)}</title>\n"
        f"<style>body{{font-family:{FONT};margin:16px;color:#1d2126}}h1{{font-size:18px}}"
        "table{border-collapse:collapse;margin-top:12px;font-size:13px}"
        "td,th{border:1px solid #d6d9dd;padding:3px 8px;text-align:left}"
        "svg circle:hover{r:5}</style>\n</head>\n<body>\n"
        f"<h1>{escape(title)}</h1>\n"
        "<p>Against " + ("iterations" if x == "iters" else "seconds since the run started") +
        "; hover a point or a line for its values.</p>\n"
        + render_svg(curves, names, x) +
        "<table>\n<tr><th>run</th><th>file</th><th>format</th><th>last iteration</th><th>last train loss</th>"
        "<th>last test outputs</th></tr>\n" + "\n".join(rows) + "\n</table>\n</body>\n</html>\n"
    )


def render_png(curves: Sequence[Series], runs: Sequence[str], x: str = "iters") -> bytes:
    """The panels through matplotlib (``pip install 'dnntool[plot]'``).

    Raises:
        DnnToolError: matplotlib is not installed.
    """
    import io

    try:
        import matplotlib
    except ImportError:
        raise DnnToolError("PNG output needs matplotlib: pip install 'dnntool[plot]' (or write .html or .svg,"
                           " which need nothing)") from None
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    if not curves:
        raise DnnToolError("nothing to plot: no series has a value in these logs")
    colour, keys = colours(runs), panels(curves)
    rows = math.ceil(len(keys) / COLS)
    fig, axes = plt.subplots(rows, COLS, figsize=(COLS * W / 80, rows * H / 80), squeeze=False)
    try:
        for k, (phase, name) in enumerate(keys):
            ax = axes[k // COLS][k % COLS]
            for c in curves:
                if (c.phase, c.name) == (phase, name):
                    ax.plot([p[0] for p in c.points], [p[1] for p in c.points], color=colour[c.run], label=c.run,
                            marker="o" if len(c.points) <= MARKERS else None, markersize=3, linewidth=1.4)
            ax.set_title(title_of(phase, name), fontsize=10)
            ax.set_xlabel("iterations" if x == "iters" else "seconds", fontsize=9)
            ax.grid(True, color="#eceef1")
        for k in range(len(keys), rows * COLS):
            axes[k // COLS][k % COLS].axis("off")
        legend = {}
        for ax in fig.axes:
            for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
                legend.setdefault(name, handle)
        fig.legend(list(legend.values()), list(legend), loc="upper center", ncol=min(3, len(legend)), fontsize=9,
                   frameon=False)
        fig.tight_layout(rect=(0, 0, 1, 1 - (0.1 + 0.2 * math.ceil(len(legend) / 3)) / (rows * H / 80)))
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
        return buf.getvalue()
    finally:
        plt.close(fig)
