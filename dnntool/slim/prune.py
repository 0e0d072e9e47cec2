"""Pruning: magnitude (the smallest weights set to zero) and structured (whole filters removed, see
:mod:`dnntool.slim.cut`), with Li et al.'s sensitivity scan: the library half of ``dnntool prune``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from dnntool.errors import NetError, UsageError
from dnntool.net import Net
from dnntool.proto import caffe_pb2
from dnntool.slim.cut import CutResult, count_of, cut_filters, weighted_layers


# -- magnitude pruning ----------------------------------------------------------------------------
@dataclass
class SparsityRow:
    """One pruned weights blob: its size and zeros before and after."""

    layer: str
    type: str
    weights: int
    zeros_before: int
    zeros_after: int

    @property
    def sparsity(self) -> float:
        return self.zeros_after / self.weights if self.weights else 0.0


def magnitude_prune(net: Net, blobs: Mapping[str, Sequence[np.ndarray]], sparsity: float,
                    scope: str = "layer", layers: Sequence[str] | None = None
                    ) -> tuple[dict[str, list[np.ndarray]], list[SparsityRow]]:
    """Set the ``sparsity`` fraction of smallest-magnitude weights to zero, per layer or over all.

    Ties are broken by position (a stable sort), so the result is deterministic. Biases are kept.
    """
    if not 0.0 <= sparsity <= 1.0:
        raise UsageError(f"--sparsity must be between 0 and 1, got {sparsity}")
    if scope not in ("layer", "global"):
        raise UsageError(f"--scope must be layer or global, got '{scope}'")
    chosen = weighted_layers(net, layers)
    out = {k: list(v) for k, v in blobs.items()}
    flats = [np.asarray(blobs[layer.name][0], np.float32).reshape(-1) for layer in chosen]
    masks = [np.ones(f.size, bool) for f in flats]
    if scope == "layer":
        for f, m in zip(flats, masks, strict=True):
            m[np.argsort(np.abs(f), kind="stable")[: count_of(sparsity, f.size)]] = False
    elif flats:
        allw = np.abs(np.concatenate(flats))
        drop = np.argsort(allw, kind="stable")[: count_of(sparsity, allw.size)]
        whole = np.ones(allw.size, bool)
        whole[drop] = False
        offsets = np.cumsum([0] + [f.size for f in flats])
        masks = [whole[offsets[i]:offsets[i + 1]] for i in range(len(flats))]
    rows = []
    for layer, f, m in zip(chosen, flats, masks, strict=True):
        w = np.asarray(blobs[layer.name][0], np.float32)
        new = np.where(m.reshape(w.shape), w, np.float32(0))
        out[layer.name] = [new, *out[layer.name][1:]]
        rows.append(SparsityRow(layer.name, layer.type, int(f.size), int(np.count_nonzero(f == 0)),
                                int(np.count_nonzero(new == 0))))
    return out, rows



# -- commands -------------------------------------------------------------------------------------
def _changed_rows(before: Net, after: Net, bw, aw, res: CutResult) -> list[list]:
    from dnntool.tools.stats import report

    old = {r.name: r for r in report(before, bw).rows}
    rows = []
    for r in report(after, aw).rows:
        o = old.get(r.name)
        if o is None or (o.params, o.macs) == (r.params, r.macs):
            continue
        f = res.filters.get(r.name)
        rows.append([r.name, r.type, f"{f[0]} -> {f[1]}" if f else "", o.params, r.params, o.macs, r.macs])
    return rows


def prune_files(net_path, weights_path, prefix, sparsity: float | None = None, scope: str = "layer",
                layers: Sequence[str] | None = None, structured: bool = False, ratio: float | None = None,
                criterion: str = "l1", input_shapes=None, batches: int = 3, db: str | None = None,
                device: str = "auto", repeat: int = 3):
    """``dnntool prune``: magnitude (``sparsity``) or structured (``structured``, ``ratio``) pruning,
    written as ``PREFIX.prototxt``/``.caffemodel``, with the per-layer and before/after report."""
    from dnntool.io.caffemodel import Weights, load_weights
    from dnntool.slim.batches import load_test_net
    from dnntool.slim.report import all_blobs, finish_caffe, measure_for, nonzero_learnable

    if structured and ratio is None:
        raise UsageError("--structured needs --ratio R (the fraction of filters to remove)")
    if structured and sparsity is not None:
        raise UsageError("--sparsity is for magnitude pruning; --structured takes --ratio")
    if not structured and sparsity is None:
        raise UsageError("give --sparsity S (magnitude pruning) or --structured --ratio R --layers L,...")
    net = load_test_net(net_path, input_shapes, db)
    weights = load_weights(weights_path)
    blobs = all_blobs(net, weights)
    m = measure_for(net, batches, db, device, repeat)
    if structured:
        res = cut_filters(net, blobs, layers or [], ratio, criterion)
        rep = finish_caffe("prune", net, weights, res.param, res.blobs, prefix, m, str(weights_path), input_shapes)
        rep.columns = ["layer", "type", "filters", "params before", "params after", "MACs before", "MACs after"]
        rep.rows = _changed_rows(net, rep.after_net, weights, Weights(blobs=res.blobs), res)
        rep.extra["groups"] = res.groups
        if any(len(g) > 1 for g in res.groups):
            rep.notes.append("layers cut alike (they meet at an Eltwise): "
                             + "; ".join(", ".join(g) for g in res.groups if len(g) > 1))
        return rep
    new, srows = magnitude_prune(net, blobs, sparsity, scope, layers)
    param = caffe_pb2.NetParameter()
    param.CopyFrom(net.param_proto)
    rep = finish_caffe("prune", net, weights, param, new, prefix, m, str(weights_path), input_shapes)
    rep.before.nonzero = nonzero_learnable(net, blobs)
    rep.after.nonzero = nonzero_learnable(net, new)
    rep.columns = ["layer", "type", "weights", "zeros before", "zeros after", "sparsity"]
    rep.rows = [[r.layer, r.type, r.weights, r.zeros_before, r.zeros_after, f"{100 * r.sparsity:.1f}%"]
                for r in srows]
    rep.notes.append("zeros are stored like any value: the caffemodel keeps its size and MACs do not"
                     " change (a sparse runtime or a compressor gains from them; --structured removes"
                     " whole filters)")
    return rep


@dataclass
class SensitivityRow:
    """One layer cut alone at one ratio, scored on the test data."""

    layer: str
    ratio: float
    filters: str
    params: int
    accuracy: float


@dataclass
class Sensitivity:
    """Accuracy versus size when each layer is cut alone (Li et al., section 4.1)."""

    metric: str
    baseline: float
    params: int
    images: int
    rows: list[SensitivityRow] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        from dnntool.slim.report import format_table

        cells = [["layer", "ratio", "filters", "params", "size", self.metric, "change"],
                 ["(none)", "0", "", f"{self.params:,}", "100.0%", f"{self.baseline:.4f}", ""]]
        for r in self.rows:
            cells.append([r.layer, f"{r.ratio:g}", r.filters, f"{r.params:,}",
                          f"{100 * r.params / self.params:.1f}%", f"{r.accuracy:.4f}",
                          f"{r.accuracy - self.baseline:+.4f}"])
        out = [f"sensitivity of {self.metric} to cutting each layer alone ({self.images} test images)"]
        out += format_table(cells)
        out += [f"refused: {k}: {v}" for k, v in self.refused.items()]
        return out

    def to_dict(self) -> dict:
        return {"metric": self.metric, "baseline": self.baseline, "params": self.params, "images": self.images,
                "rows": [r.__dict__ for r in self.rows], "refused": self.refused}


def accuracy_metric(net: Net) -> str:
    """The Caffe name of the first Accuracy top of the TEST net (what sensitivity scores)."""
    for layer in net.layers:
        if layer.type == "Accuracy":
            return layer.top_names[0]
    raise UsageError(f"net '{net.name}' has no Accuracy layer in its TEST phase to score with")


def default_iterations(net: Net) -> int:
    """Batches that cover the TEST data layer's database once."""
    from dnntool.data.feeder import source_for_layer
    from dnntool.slim.batches import input_layer

    layer = input_layer(net)
    src = source_for_layer(layer, net.source)
    try:
        return max(1, -(-len(src) // layer.top_shapes[0][0]))
    finally:
        src.close()


def score(net: Net, weights, iterations: int, metric: str, device: str = "auto") -> float:
    """``metric`` averaged over ``iterations`` TEST batches (``dnntool test``'s numbers)."""
    from dnntool.tools.evaluate import evaluate

    res = evaluate(net, weights, iterations, device)
    return next(s.values[0] for s in res.scores if s.name == metric)


def sensitivity(net_path, weights_path, layers: Sequence[str] | None = None,
                ratios: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9), test_db: str | None = None,
                iterations: int | None = None, criterion: str = "l1", device: str = "auto",
                progress=None) -> Sensitivity:
    """Cut each layer alone at each ratio and score the net on its TEST data (or ``test_db``)."""
    from dnntool.io.caffemodel import Weights, load_weights
    from dnntool.slim.batches import read_with_source
    from dnntool.slim.report import all_blobs
    from dnntool.tools.stats import report

    net = Net.from_prototxt(net_path, "test") if test_db is None else read_with_source(net_path, test_db)
    weights = load_weights(weights_path)
    metric = accuracy_metric(net)
    iterations = iterations or default_iterations(net)
    blobs = all_blobs(net, weights)
    base = report(net, weights).params
    out = Sensitivity(metric, score(net, weights, iterations, metric, device), base,
                      iterations * net.blobs[net.input_names()[0]].shape[0])
    todo = [(layer.name, r) for layer in weighted_layers(net, layers) for r in ratios]
    for k, (name, r) in enumerate(todo):
        if progress is not None:
            progress(k, len(todo))
        if name in out.refused:
            continue
        try:
            res = cut_filters(net, blobs, [name], r, criterion)
        except NetError as e:
            out.refused[name] = e.message
            continue
        cut = Net.from_param(res.param, "test", path=net.source)
        w = Weights(blobs=res.blobs)
        out.rows.append(SensitivityRow(name, r, "{} -> {}".format(*res.filters[name]), report(cut, w).params,
                                       score(cut, w, iterations, metric, device)))
    return out
