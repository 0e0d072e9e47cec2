"""Training curves from Caffe-format logs: the library half of ``dnntool plot-log``.

Reads what Caffe's tools/extra/parse_log.py reads (glog lines from ``caffe train`` or ``dnntool
train``: ``Iteration N (x iter/s, ...), loss = L``, ``Iteration N, lr = R``, ``Train net output #k:
name = v``, ``Iteration N, Testing net (#i)``, ``Test net output #k: name = v``; also the older
display line without ``iter/s``, and lines without glog's prefix) and ``dnntool train --log-json``
files. Seconds come from glog's year-less timestamps as extract_seconds.py computes them (from the
``Solving`` line, else the first stamp), a new year starting where the month goes down.

Each run is a list of records, one per (phase, iteration[, test net]); ``table`` flattens runs to
parse_log.py's columns (NumIters, Seconds, LearningRate, then the outputs).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from dnntool.errors import DnnToolError, FormatError, SourceLoc, UsageError

_NUM = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:inf|nan))"
_GLOG = re.compile(r"^[IWEF](\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d{1,6})\s+\d+\s+[^\]]*\]\s?(.*)$")
_DISPLAY = re.compile(rf"Iteration (\d+)(?: \([^)]*\))?, loss = {_NUM}")
_LR = re.compile(rf"Iteration (\d+), lr = {_NUM}")
_TESTING = re.compile(r"Iteration (\d+), Testing net \(#(\d+)\)")
_OUTPUT = re.compile(rf"(Train|Test) net output #\d+: (\S+) = {_NUM}")
_TEST_LOSS = re.compile(rf"Test loss: {_NUM}")
_TEST_SCORE = re.compile(rf"Test score #(\d+): {_NUM}")  # Caffe before 2014
_ITERATION = re.compile(r"Iteration (\d+)")
LEAP, PLAIN = 2000, 2001  # stand-in years for year-less stamps (see _seconds)


@dataclass
class Record:
    """One row of a run: the train net at a display iteration, or one test net at a test."""

    phase: str  # "train" or "test"
    iteration: int
    seconds: float | None  # since the run started; None without timestamps
    lr: float | None  # the last learning rate logged (Caffe's LearningRate column)
    values: dict[str, float] = field(default_factory=dict)  # outputs by name (+ smoothed_loss)
    net: int = 0  # the test net's number

    def to_dict(self) -> dict:
        return {"phase": self.phase, "iteration": self.iteration, "seconds": self.seconds, "lr": self.lr,
                "net": self.net, "values": self.values}


@dataclass
class LogRun:
    """One log file's records, in the order it logged them."""

    name: str
    path: str
    format: str  # "caffe" (glog lines) or "json" (--log-json)
    records: list[Record] = field(default_factory=list)

    @property
    def has_seconds(self) -> bool:
        return any(r.seconds is not None for r in self.records)

    def to_dict(self) -> dict:
        return {"name": self.name, "path": self.path, "format": self.format,
                "records": [r.to_dict() for r in self.records]}


def parse_log(path: str | Path, name: str | None = None) -> LogRun:
    """Parse a Caffe-format training log or a ``--log-json`` file.

    Raises:
        FormatError: the file holds no recognizable log line.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise DnnToolError(f"cannot read the log: {e.strerror or e}", SourceLoc(str(p))) from None
    lines = text.splitlines()
    first = next((ln.strip() for ln in lines if ln.strip()), "")
    run = LogRun(name or p.name, str(p), "json" if first.startswith("{") else "caffe")
    run.records = _parse_json(lines, str(p)) if run.format == "json" else _parse_caffe(lines)
    if not run.records:
        raise FormatError("no training log lines found (Caffe's 'Iteration N ..., loss = L', 'Train/Test net"
                          " output #k: name = v', or dnntool train --log-json records)", SourceLoc(str(p)))
    return run


def parse_logs(paths: Sequence[str | Path]) -> list[LogRun]:
    """Several logs, named by file name (with the parent folder where two names clash)."""
    names = [Path(p).name for p in paths]
    return [parse_log(p, str(Path(p).parent.name + "/" + n) if names.count(n) > 1 else n)
            for p, n in zip(paths, names, strict=True)]


def _parse_json(lines: list[str], path: str) -> list[Record]:
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            ev = json.loads(line)
        except json.JSONDecodeError as e:
            raise FormatError(f"not a JSON record: {e.msg}", SourceLoc(path, i, e.colno)) from None
        kind = ev.get("event") if isinstance(ev, dict) else None
        if kind not in ("train", "test") or "iteration" not in ev:
            continue
        values = {o["name"]: float(o["value"]) for o in ev.get("outputs", [])}
        if kind == "train":
            values.setdefault("loss", float(ev["loss"]))
            values["smoothed_loss"] = float(ev["loss"])
        elif ev.get("loss") is not None:
            values.setdefault("loss", float(ev["loss"]))
        lr = ev.get("lr")
        if kind == "test":
            lr = next((r.lr for r in reversed(out) if r.phase == "train"), None)
        out.append(Record(kind, int(ev["iteration"]), ev.get("seconds"), lr, values, int(ev.get("net", 0))))
    return out


def _parse_caffe(lines: list[str]) -> list[Record]:
    msgs, stamps = [], []
    for line in lines:
        m = _GLOG.match(line.strip())
        stamps.append(_stamp(m.groups()) if m else None)
        msgs.append(m.group(7) if m else line.strip())
    seconds = _seconds(stamps, msgs)
    out: list[Record] = []
    current: dict[tuple[str, int], Record] = {}  # the open row per (phase, net)
    it, lr = None, None

    def row(phase: str, net: int, at: int, t: float | None) -> Record:
        r = current.get((phase, net))
        if r is None or r.iteration != at:
            r = Record(phase, at, t, lr if phase == "test" else None, net=net)
            current[(phase, net)] = r
            out.append(r)
        return r

    test_net = 0
    for msg, t in zip(msgs, seconds, strict=True):
        if m := _DISPLAY.search(msg):
            it = int(m.group(1))
            row("train", 0, it, t).values["smoothed_loss"] = float(m.group(2))
        elif m := _LR.search(msg):
            it, lr = int(m.group(1)), float(m.group(2))
            row("train", 0, it, t).lr = lr
        elif m := _TESTING.search(msg):
            it, test_net = int(m.group(1)), int(m.group(2))
            row("test", test_net, it, t)
        elif (m := _OUTPUT.search(msg)) and it is not None:
            phase = m.group(1).lower()
            r = row(phase, test_net if phase == "test" else 0, it, t)
            r.values[m.group(2)] = float(m.group(3))
        elif (m := _TEST_LOSS.search(msg)) and it is not None:
            row("test", test_net, it, t).values.setdefault("loss", float(m.group(1)))
        elif (m := _TEST_SCORE.search(msg)) and it is not None:
            row("test", test_net, it, t).values[f"score{m.group(1)}"] = float(m.group(2))
        elif m := _ITERATION.search(msg):
            it = int(m.group(1))
    for r in out:  # older logs print no Train net output lines: the display loss is the loss
        if r.phase == "train" and "loss" not in r.values and "smoothed_loss" in r.values:
            r.values["loss"] = r.values["smoothed_loss"]
        if "smoothed_loss" in r.values:  # loss first, as parse_log.py's columns
            r.values["smoothed_loss"] = r.values.pop("smoothed_loss")
    return [r for r in out if r.values or r.lr is not None]


def _stamp(groups: tuple) -> tuple[int, ...] | None:
    """(month, day, hour, minute, second, microsecond) of a glog prefix; None if it is no date."""
    stamp = (*(int(g) for g in groups[:5]), int(groups[5].ljust(6, "0")))
    try:
        datetime(LEAP, *stamp)
    except ValueError:  # a line that only looks like glog's
        return None
    return stamp


def _seconds(stamps: list[tuple | None], msgs: list[str]) -> list[float | None]:
    """Seconds since the ``Solving`` line (else the first stamp) for each stamped line.

    glog stamps have no year: as extract_seconds.py/parse_log.py do, a month lower than the last
    one starts a new year. The years are stand-ins: non-leap, except that the year holding a
    Feb 29 stamp is a leap year.
    """
    year, last_month, years = 0, 0, []
    for s in stamps:
        if s is not None:
            year += s[0] < last_month
            last_month = s[0]
        years.append(year)
    leap_year = next((y for s, y in zip(stamps, years, strict=True) if s is not None and s[:2] == (2, 29)), None)
    base = PLAIN if leap_year is None else LEAP - leap_year

    def when(s: tuple, y: int) -> datetime:
        return datetime(base + y, *s)

    start = next((when(s, y) for s, y, m in zip(stamps, years, msgs, strict=True)
                  if s is not None and "Solving" in m), None)
    times = [None if s is None else when(s, y) for s, y in zip(stamps, years, strict=True)]
    start = start or next((t for t in times if t is not None), None)
    return [None if t is None or start is None else (t - start).total_seconds() for t in times]


# -- tables ----------------------------------------------------------------------------------------
def names(runs: Sequence[LogRun], phase: str) -> list[str]:
    """The output names a phase logged in any run, in first-seen order."""
    seen: dict[str, None] = {}
    for run in runs:
        for r in run.records:
            if r.phase == phase:
                seen.update(dict.fromkeys(_named(r)))
    return list(seen)


def _named(r: Record) -> list[str]:
    return [n if r.net == 0 else f"{n}#{r.net}" for n in r.values]


def table(runs: Sequence[LogRun]) -> tuple[list[str], list[list]]:
    """parse_log.py's columns for every run and phase in one table (run, phase first)."""
    outputs = list(dict.fromkeys(names(runs, "train") + names(runs, "test")))
    cols = ["run", "phase", "NumIters", "Seconds", "LearningRate", *outputs]
    rows = []
    for run in runs:
        for r in run.records:
            vals = dict(zip(_named(r), r.values.values(), strict=True))
            rows.append([run.name, r.phase, r.iteration, r.seconds, r.lr, *(vals.get(n) for n in outputs)])
    return cols, rows


def to_csv(runs: Sequence[LogRun]) -> str:
    """The table as CSV (empty cells where a row lacks a column)."""
    import csv
    import io

    cols, rows = table(runs)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for row in rows:
        w.writerow(["" if v is None else f"{v:g}" if isinstance(v, float) else v for v in row])
    return buf.getvalue()


# -- series ----------------------------------------------------------------------------------------
@dataclass
class Series:
    """One panel's curve for one run: (x, y) points."""

    run: str
    phase: str
    name: str
    points: list[tuple[float, float]]


def series(runs: Sequence[LogRun], x: str = "iters", wanted: Sequence[str] | None = None,
           smooth: int = 1) -> list[Series]:
    """The curves to draw: per (phase, output name) panel, one per run; ``lr`` is the train lr.

    ``wanted`` names outputs (``loss``, ``accuracy``, ``lr``) or phase:name (``test:loss``); by
    default every output, with smoothed_loss only where it differs from loss.

    Raises:
        UsageError: an unknown series, or ``x="seconds"`` for a log without timestamps.
    """
    if x not in ("iters", "seconds"):
        raise UsageError(f"--x must be iters or seconds, got '{x}'")
    if x == "seconds":
        for run in runs:
            if not run.has_seconds:
                raise UsageError(f"{run.path}: no timestamps (glog's 'I0210 13:39:22.381027' prefix) to plot"
                                 " against seconds; use --x iters")
    panels = [("train", "lr")] + [("train", n) for n in names(runs, "train")] + \
             [("test", n) for n in names(runs, "test")]
    if wanted is None:
        keep = [p for p in panels if p[1] != "smoothed_loss" or _smoothing_differs(runs)]
    else:
        keep = []
        for w in wanted:
            phase, _, n = w.rpartition(":")
            hit = [p for p in panels if p[1] == n and (not phase or p[0] == phase)]
            if not hit:
                known = ", ".join(dict.fromkeys(f"{ph}:{nm}" for ph, nm in panels))
                raise UsageError(f"no series '{w}' in the logs (known: {known})")
            keep += [p for p in hit if p not in keep]
    out = []
    for phase, n in keep:
        for run in runs:
            pts = []
            for r in run.records:
                if r.phase != phase:
                    continue
                xv = r.iteration if x == "iters" else r.seconds
                yv = r.lr if n == "lr" and phase == "train" else dict(zip(_named(r), r.values.values(),
                                                                          strict=True)).get(n)
                if xv is not None and yv is not None:
                    pts.append((float(xv), float(yv)))
            if pts:
                out.append(Series(run.name, phase, n, _smoothed(pts, smooth)))
    return out


def _smoothing_differs(runs: Sequence[LogRun]) -> bool:
    return any(r.values.get("smoothed_loss", r.values.get("loss")) != r.values.get("loss")
               for run in runs for r in run.records if r.phase == "train")


def _smoothed(pts: list[tuple[float, float]], n: int) -> list[tuple[float, float]]:
    """A trailing moving average over ``n`` points (non-finite values left out of the sums)."""
    if n <= 1:
        return pts
    out = []
    for i, (xv, _) in enumerate(pts):
        window = [y for _, y in pts[max(0, i - n + 1):i + 1] if math.isfinite(y)]
        out.append((xv, sum(window) / len(window) if window else math.nan))
    return out


# -- drawing ---------------------------------------------------------------------------------------
def render(runs: Sequence[LogRun], fmt: str, x: str = "iters", wanted: Sequence[str] | None = None,
           smooth: int = 1) -> bytes:
    """The curves of ``runs`` as file contents: ``html`` (self-contained), ``svg`` or ``png``."""
    from dnntool.tools import curves

    drawn = series(runs, x, wanted, smooth)
    names = [r.name for r in runs]
    if fmt == "png":
        return curves.render_png(drawn, names, x)
    if fmt == "svg":
        return curves.render_svg(drawn, names, x).encode("utf-8")
    if fmt == "html":
        return curves.render_html(drawn, runs, x).encode("utf-8")
    raise UsageError(f"unknown format '{fmt}' (expected html, svg or png)")


def write_plot(runs: Sequence[LogRun], path: str | Path, x: str = "iters", wanted: Sequence[str] | None = None,
               smooth: int = 1) -> list[Series]:
    """Draw ``runs`` to ``path`` (format from its suffix), written atomically; returns the curves."""
    from dnntool.io.atomic import write_bytes
    from dnntool.tools.curves import format_of

    fmt = format_of(str(path))
    write_bytes(path, render(runs, fmt, x, wanted, smooth))
    return series(runs, x, wanted, smooth)
