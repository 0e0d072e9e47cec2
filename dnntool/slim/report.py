"""The before/after report shared by the slimming commands, and the batches they run on.

Params, stored values and MACs come from :func:`dnntool.tools.stats.report` (the ``param-count`` /
``flops`` counts, never recounted here); the file size is the weights file (caffemodel or .onnx);
the forward time is the median ONNX Runtime time of one batch over the same batches for both
models (after one untimed pass per batch). Outputs of the two runs are compared as ``compare`` does.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dnntool.errors import DnnToolError, UsageError
from dnntool.net import Net
from dnntool.slim.batches import Run, db_batches, input_layer, random_batches, run_models


# -- which blobs a model is judged by -------------------------------------------------------------
def feature_outputs(net: Net) -> list[str]:
    """The net's outputs (SSA ids) with loss and metric layers replaced by the scores they read.

    A train_val net ends in SoftmaxWithLoss/Accuracy, which need labels; what a transform changes is
    the score blob they read (``ip2``), so that is what gets timed and compared.
    """
    out: list[str] = []
    for tid in net.output_ids():
        producer = net.blobs[tid].producer
        if producer is None:
            continue
        layer = net.layer(producer)
        if layer.impl.is_data or not layer.impl.translatable:
            continue
        if layer.impl.family == "loss":
            out += [b for b in layer.bottoms[:1] if _computed(net, b)]
        else:
            out.append(tid)
    return list(dict.fromkeys(out))


def _computed(net: Net, blob_id: str) -> bool:
    producer = net.blobs[blob_id].producer
    return producer is not None and not net.layer(producer).impl.is_data


# -- differences ----------------------------------------------------------------------------------
@dataclass
class Diff:
    """How far ``b`` is from the reference ``a``: max/mean |a-b|, and those divided by max/mean |a|."""

    max_abs: float
    mean_abs: float
    max_rel: float
    mean_rel: float
    shape: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}


def diff(a: Sequence[np.ndarray] | np.ndarray, b: Sequence[np.ndarray] | np.ndarray) -> Diff:
    """Differences over one array or a list of arrays (one per batch), in float64.

    Relative figures are normalised by the reference's magnitude (max |a| and mean |a|), not element
    by element, so values near zero do not blow them up.
    """
    aa = [np.asarray(x, np.float64) for x in (a if isinstance(a, (list, tuple)) else [a])]
    bb = [np.asarray(x, np.float64) for x in (b if isinstance(b, (list, tuple)) else [b])]
    if [x.size for x in aa] != [x.size for x in bb]:
        raise DnnToolError(f"cannot compare shapes {list(aa[0].shape)} and {list(bb[0].shape)}")
    fa = np.concatenate([x.reshape(-1) for x in aa]) if aa else np.zeros(0)
    fb = np.concatenate([x.reshape(-1) for x in bb]) if bb else np.zeros(0)
    if fa.size == 0:
        return Diff(0.0, 0.0, 0.0, 0.0, list(aa[0].shape) if aa else [])
    d = np.abs(fa - fb)
    ref_max, ref_mean = float(np.abs(fa).max()), float(np.abs(fa).mean())
    return Diff(float(d.max()), float(d.mean()), float(d.max()) / ref_max if ref_max else float(d.max()),
                float(d.mean()) / ref_mean if ref_mean else float(d.mean()), list(aa[0].shape))


# -- the report -----------------------------------------------------------------------------------
@dataclass
class Side:
    """One model of the comparison: counts (``param-count``/``flops``), file size, forward time."""

    params: int
    stored: int
    macs: int
    bytes: int
    ms: float | None = None
    nonzero: int | None = None  # learnable values that are not zero (prune)


@dataclass
class SlimReport:
    """What a slimming command did: files written, before/after figures, per-layer rows, notes."""

    command: str
    net: str
    written: list[str]
    before: Side
    after: Side
    provider: str = ""
    batch: int = 1
    batches: int = 0
    data: str = "random"  # where the timed batches came from
    output_diff: dict[str, Diff] = field(default_factory=dict)  # per output, after vs before
    columns: list[str] = field(default_factory=list)  # per-layer table
    rows: list[list] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    after_net: Net | None = field(default=None, repr=False)  # the rebuilt result, for callers

    def to_dict(self) -> dict:
        d = {"command": self.command, "net": self.net, "written": self.written,
             "before": dataclasses.asdict(self.before), "after": dataclasses.asdict(self.after),
             "provider": self.provider, "batch": self.batch, "timed_batches": self.batches,
             "timed_data": self.data,
             "output_diff": {k: v.to_dict() for k, v in self.output_diff.items()},
             "layers": [dict(zip(self.columns, r, strict=True)) for r in self.rows],
             "notes": self.notes}
        for side in ("before", "after"):
            if d[side]["ms"] is not None:
                d[side]["ms"] = round(d[side]["ms"], 4)
        d.update(self.extra)
        return d

    def lines(self) -> list[str]:
        """The report as text: the before/after table, the per-layer table, output differences, notes."""
        b, a = self.before, self.after
        rows = [("params", b.params, a.params), ("stored (BatchNorm)", b.stored, a.stored),
                ("MACs", b.macs, a.macs), ("file bytes", b.bytes, a.bytes)]
        if b.nonzero is not None and a.nonzero is not None:
            rows.insert(1, ("nonzero params", b.nonzero, a.nonzero))
        if b.ms is not None and a.ms is not None:
            rows.append((f"forward ms/batch ({self.batch})", b.ms, a.ms))
        table = [["", "before", "after", "change"]]
        for name, x, y in rows:
            change = f"{(y - x) / x * 100:+.1f}%" if x else ("" if x == y else "new")
            fmt = (lambda v: f"{v:.3f}") if isinstance(x, float) else (lambda v: f"{v:,}")
            table.append([name, fmt(x), fmt(y), change])
        out = [f"{self.command}: {self.net} -> {', '.join(self.written) or '(nothing written)'}"]
        out += format_table(table)
        if self.rows:
            out.append("")
            out += format_table([self.columns, *[[_cell(v) for v in r] for r in self.rows]])
        if self.output_diff:
            out.append("")
            out += format_table([["output (after vs before)", "max abs", "mean abs", "max rel", "mean rel"],
                                 *[[k, f"{d.max_abs:.3g}", f"{d.mean_abs:.3g}", f"{d.max_rel:.3g}",
                                    f"{d.mean_rel:.3g}"] for k, d in self.output_diff.items()]])
        if self.batches:
            out.append(f"timed on {self.batches} {self.data} batch(es) of {self.batch} with {self.provider}")
        out += [f"note: {n}" for n in self.notes]
        return out


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "" if v is None else str(v)


def format_table(cells: list[list[str]]) -> list[str]:
    """Left-aligned first column, right-aligned others, two spaces apart."""
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(cells[0]))]
    return ["  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w)
                      for i, (v, w) in enumerate(zip(r, widths, strict=True))).rstrip() for r in cells]


def side_of(net: Net, weights, path: str | os.PathLike[str] | None) -> Side:
    """Counts of ``net`` with its Weights, and the size of the file at ``path``."""
    from dnntool.tools.stats import report

    rep = report(net, weights)
    size = os.path.getsize(path) if path is not None and os.path.exists(path) else 0
    return Side(rep.params, rep.stored, rep.macs, size)


def nonzero_learnable(net: Net, arrays: Mapping[str, Sequence[np.ndarray]]) -> int:
    """Learnable values that are not exactly zero (shared blobs once)."""
    n = 0
    for layer in net.layers:
        for k, p in enumerate(layer.params):
            if p.blob.learnable and p.shared_from is None and layer.name in arrays:
                n += int(np.count_nonzero(arrays[layer.name][k]))
    return n


# -- writing a Caffe result -----------------------------------------------------------------------
def out_paths(prefix: str | os.PathLike[str], *inputs: str | os.PathLike[str] | None) -> tuple[str, str]:
    """``PREFIX.prototxt`` and ``PREFIX.caffemodel``; refuses to overwrite an input file."""
    p = str(prefix)
    for ext in (".prototxt", ".caffemodel"):
        if p.endswith(ext):
            p = p[: -len(ext)]
    if not p or p.endswith(os.sep):
        raise UsageError(f"-o '{prefix}': give an output prefix such as out/net_folded")
    paths = (p + ".prototxt", p + ".caffemodel")
    for q in paths:
        for i in inputs:
            if i is not None and os.path.exists(q) and os.path.samefile(q, i):
                raise UsageError(f"-o '{prefix}' would overwrite the input '{i}'")
    return paths


def all_blobs(net: Net, weights) -> dict[str, list[np.ndarray]]:
    """Every layer's arrays: the net's (in its shapes) and those of layers it does not build."""
    from dnntool.net.weights import layer_arrays

    blobs = {k: list(v) for k, v in weights.blobs.items()}
    blobs.update({k: [np.asarray(a, np.float32) for a in v] for k, v in layer_arrays(net, weights).items()})
    return blobs


def write_caffe(param, blobs: Mapping[str, Sequence[np.ndarray]], prefix: str | os.PathLike[str],
                *inputs: str | os.PathLike[str] | None) -> tuple[str, str]:
    """Write ``param`` and the blobs of its layers as ``PREFIX.prototxt`` and ``PREFIX.caffemodel``."""
    from dnntool.io.caffemodel import save_caffemodel
    from dnntool.io.prototxt import write_prototxt

    proto, model = out_paths(prefix, *inputs)
    write_prototxt(param, proto)
    names = {lp.name for lp in param.layer}
    save_caffemodel(model, list(param.layer), {k: v for k, v in blobs.items() if k in names}, name=param.name)
    return proto, model


@dataclass
class Measure:
    """What to time both models on: batches, where they came from, device and rounds."""

    batches: list[dict[str, np.ndarray]]
    data: str = "random"
    device: str = "auto"
    repeat: int = 3
    threads: int | None = None


def measure_for(net: Net, batches: int = 3, db: str | None = None, device: str = "auto",
                repeat: int = 3, seed: int = 0, real: bool = False) -> Measure:
    """Batches for the before/after timing: real ones from ``db`` when given (or, with ``real``,
    from the net's own Data/ImageData layer when it has one), else random."""
    if batches <= 0:
        return Measure([], "no", device, 0)
    if db is not None:
        return Measure(db_batches(net, batches, db), Path(str(db)).name, device, repeat)
    if real and input_layer(net).type in ("Data", "ImageData"):
        return Measure(db_batches(net, batches), "TEST-data", device, repeat)
    return Measure(random_batches(net, batches, seed), "random", device, repeat)


def compare_nets(before: Net, before_arrays, after: Net, after_arrays, m: Measure,
                 outputs: Sequence[str] | None = None) -> tuple[Run, Run, dict[str, Diff]]:
    """Translate both nets to the same outputs (Caffe names), run them on the same batches."""
    from dnntool.translate.forward import to_onnx

    names = list(outputs) if outputs is not None else [before.blobs[t].name for t in feature_outputs(before)]
    tr_b = to_onnx(before, before_arrays, outputs=names)
    tr_a = to_onnx(after, after_arrays, outputs=names)
    rb, ra = run_models([tr_b.model, tr_a.model], m.batches, None, m.device, m.repeat, m.threads)
    diffs = {name: diff(rb.outputs[ob], ra.outputs[oa])
             for name, ob, oa in zip(names, tr_b.outputs, tr_a.outputs, strict=True)}
    return rb, ra, diffs


def finish_caffe(command: str, net: Net, weights, new_param, new_blobs, prefix, m: Measure,
                 weights_path: str | None = None, input_shapes=None,
                 outputs: Sequence[str] | None = None) -> SlimReport:
    """Write the new net and weights, rebuild and check them, and measure both nets on ``m``
    (comparing ``outputs``, Caffe blob names, by default the net's scores)."""
    from dnntool.io.caffemodel import Weights
    from dnntool.net.weights import layer_arrays

    proto, model = write_caffe(new_param, new_blobs, prefix, net.source, weights_path)
    after = Net.from_param(new_param, net.phase, input_shapes=input_shapes, path=net.source)
    after.source = proto
    new_w = Weights(blobs={k: list(v) for k, v in new_blobs.items()}, path=model)
    rep = SlimReport(command, net.name or Path(str(net.source)).stem, [proto, model],
                     side_of(net, weights, weights_path), side_of(after, new_w, model),
                     data=m.data)
    if m.batches:
        before_arrays, after_arrays = layer_arrays(net, weights), layer_arrays(after, new_w)
        rb, ra, diffs = compare_nets(net, before_arrays, after, after_arrays, m, outputs)
        rep.before.ms, rep.after.ms, rep.provider = rb.ms, ra.ms, ra.provider
        rep.batch, rep.batches = next(iter(m.batches[0].values())).shape[0], len(m.batches)
        rep.output_diff = diffs
    rep.after_net = after
    return rep
