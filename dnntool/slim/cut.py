"""Structured pruning (Li et al., "Pruning Filters for Efficient ConvNets"): remove whole filters of
chosen layers and rewrite every layer that reads their channels.

A cut follows each cut layer's output channels through the graph: layers that work per channel
(activations, BatchNorm, Scale, Bias, pooling, LRN, Split, Dropout) pass it on and lose the same
entries of their blobs, a depthwise convolution loses the same filters, Concat places each bottom's
cut at its offset, and the first Convolution, Deconvolution or InnerProduct reading the channels
loses the matching input weights (``c * inner + s`` columns behind a Flatten). An Eltwise pairs
channels: its bottoms must be cut alike, so the layers whose cuts meet at an Eltwise form one group
that removes the same filters (ranked by the sum of each member's filter norms divided by that
member's mean norm); a bottom that is not cut makes the cut an error naming the layers. Any other
reader of cut channels (Reshape, Softmax, a loss...) is refused too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from dnntool.errors import NetError, UsageError
from dnntool.net import Net
from dnntool.net.net import Layer
from dnntool.proto import caffe_pb2

WEIGHTED = ("Convolution", "Deconvolution", "DepthwiseConvolution", "ConvolutionDepthwise", "InnerProduct")
DEPTHWISE = ("DepthwiseConvolution", "ConvolutionDepthwise")
#: layers that treat each channel on its own: a cut passes through them unchanged
PER_CHANNEL = frozenset({
    "ReLU", "PReLU", "ELU", "Sigmoid", "TanH", "AbsVal", "BNLL", "Power", "Exp", "Log", "Threshold",
    "Clip", "Swish", "Dropout", "BatchNorm", "Scale", "Bias", "Pooling", "LRN", "Split",
})


def weighted_layers(net: Net, names: Sequence[str] | None = None) -> list[Layer]:
    """The layers with a weights blob to prune: ``names`` (checked) or every one of them."""
    have = [layer for layer in net.layers if layer.type in WEIGHTED and layer.params
            and layer.params[0].shared_from is None]
    if not names:
        return have
    by_name = {layer.name: layer for layer in have}
    bad = [n for n in names if n not in by_name]
    if bad:
        raise UsageError(f"--layers: {', '.join(repr(b) for b in bad)} is not a Convolution, Deconvolution or"
                         f" InnerProduct of net '{net.name}' (these are: {', '.join(by_name) or 'none'})")
    return [by_name[n] for n in dict.fromkeys(names)]



# -- structured pruning: where each cut goes -------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """A blob's axis-1 entries: segments of (group cutting them or None, channels), each channel
    spanning ``inner`` consecutive entries (1 for N x C x H x W; H*W after a Flatten)."""

    segments: tuple[tuple[str | None, int], ...]
    inner: int = 1

    @property
    def channels(self) -> int:
        return sum(n for _, n in self.segments)


def _merged(segs) -> tuple[tuple[str | None, int], ...]:
    out: list[tuple[str | None, int]] = []
    for g, n in segs:
        if out and g is None and out[-1][0] is None:
            out[-1] = (None, out[-1][1] + n)
        else:
            out.append((g, n))
    return tuple(out)


@dataclass
class Plan:
    """How a set of cuts spreads: each touched blob's layout, each touched layer's action, groups."""

    layouts: dict[str, Layout] = field(default_factory=dict)
    actions: list[tuple[Layer, str]] = field(default_factory=list)
    parent: dict[str, str] = field(default_factory=dict)  # union-find over cut layers

    def root(self, g: str) -> str:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def unite(self, a: str, b: str) -> None:
        ra, rb = self.root(a), self.root(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def members(self, roots) -> list[str]:
        rs = {self.root(r) for r in roots}
        return [t for t in self.parent if self.root(t) in rs]


def _origin(net: Net, blob: str) -> Layer | None:
    """The layer that decides a blob's channels, looking back through per-channel layers."""
    while True:
        producer = net.blobs[blob].producer
        if producer is None:
            return None
        layer = net.layer(producer)
        if layer.type not in PER_CHANNEL or len(layer.bottoms) != 1:
            return layer
        blob = layer.bottoms[0]


def count_of(ratio: float, n: int) -> int:
    """``ratio`` of ``n`` rounded half up (Python's round() would round 2.5 to 2)."""
    return int(np.floor(ratio * n + 0.5))


def _target_error(layer: Layer) -> str | None:
    group = layer.param.convolution_param.group or 1
    if layer.type in DEPTHWISE or (layer.type == "Convolution" and group > 1):
        return (f"{layer.type} '{layer.name}' is grouped/depthwise: its filters follow its input channels;"
                " cut the layer before it")
    if layer.type == "Deconvolution" and group > 1:
        return f"Deconvolution '{layer.name}' has group {group}"
    if len(layer.tops) != 1:
        return f"{layer.type} '{layer.name}' has {len(layer.bottoms)} bottoms sharing its filters"
    if any(p.share_name for p in layer.params):
        return f"{layer.type} '{layer.name}' shares its weights with other layers (param name)"
    if layer.type == "InnerProduct" and len(layer.top_shapes[0]) != 2:
        return f"InnerProduct '{layer.name}' outputs {list(layer.top_shapes[0])}, not N x outputs"
    return None


def _is_depthwise(layer: Layer) -> bool:
    if layer.type in DEPTHWISE:
        return True
    p = layer.param.convolution_param
    c = layer.bottom_shapes[0][1]
    return layer.type == "Convolution" and (p.group or 1) > 1 and p.group == c == p.num_output


def plan_cuts(net: Net, targets: Sequence[str]) -> Plan:
    """Follow the cut of ``targets``' output channels; raises NetError for a cut that cannot be made."""
    plan = Plan(parent={t: t for t in targets})
    for t in targets:
        why = _target_error(net.layer(t))
        if why is not None:
            raise NetError(f"cannot cut filters of '{t}': {why}", layer=t)
    for layer in net.layers:
        touched = [b for b in layer.bottoms if b in plan.layouts]
        if touched:
            _consume(net, plan, layer, touched)
        if layer.name in plan.parent:
            plan.layouts[layer.tops[0]] = Layout(((layer.name, layer.top_shapes[0][1]),))
            if not touched:
                plan.actions.append((layer, "target"))
    return plan


def _refuse(net: Net, plan: Plan, layer: Layer, blob: str, why: str) -> NetError:
    cut = plan.members(g for g, _ in plan.layouts[blob].segments if g is not None)
    return NetError(f"cannot cut {', '.join(repr(c) for c in cut)}: {layer.type} '{layer.name}' reads"
                    f" '{net.blobs[blob].name}', whose channels the cut changes, and {why}", layer=layer.name)


def _consume(net: Net, plan: Plan, layer: Layer, touched: list[str]) -> None:
    """Record what ``layer`` does with cut bottoms and the layouts of its tops."""
    b0 = touched[0]
    lay = plan.layouts[b0]
    if any(p.shared_from is not None or p.share_name for p in layer.params):
        raise _refuse(net, plan, layer, b0, "it shares its blobs with other layers")
    t = layer.type
    if t in PER_CHANNEL:
        if len(layer.bottoms) != 1:
            raise _refuse(net, plan, layer, b0, "it has a second bottom")
        if t in ("Scale", "Bias") and any(len(p.shape) != 1 for p in layer.params):
            raise _refuse(net, plan, layer, b0, "its blobs span more than the channel axis")
        for top in layer.tops:
            plan.layouts[top] = lay
        plan.actions.append((layer, "per_channel"))
    elif t in WEIGHTED and _is_depthwise(layer):
        plan.layouts[layer.tops[0]] = lay
        plan.actions.append((layer, "depthwise"))
    elif t in ("Convolution", "Deconvolution", "InnerProduct"):
        if len(layer.bottoms) != 1:
            raise _refuse(net, plan, layer, b0, "its filters are shared by several bottoms")
        if t != "InnerProduct" and (layer.param.convolution_param.group or 1) > 1:
            raise _refuse(net, plan, layer, b0, "it is a grouped convolution")
        if t == "InnerProduct" and layer.param.inner_product_param.axis not in (1, 1 - len(layer.bottom_shapes[0])):
            raise _refuse(net, plan, layer, b0, "it flattens from an axis other than 1")
        plan.actions.append((layer, "input"))
    elif t == "Flatten":
        p = layer.param.flatten_param
        if p.axis != 1 or p.end_axis != -1:
            raise _refuse(net, plan, layer, b0, "it flattens other axes than 1..-1")
        rest = int(np.prod(net.blobs[b0].shape[2:]))
        plan.layouts[layer.tops[0]] = Layout(lay.segments, lay.inner * rest)
        plan.actions.append((layer, "flatten"))
    elif t == "Concat":
        shape = net.blobs[b0].shape
        axis = layer.param.concat_param.axis if layer.param.concat_param.HasField("axis") else 1
        if axis not in (1, 1 - len(shape)) or layer.param.concat_param.HasField("concat_dim"):
            raise _refuse(net, plan, layer, b0, "it concatenates along an axis other than channels")
        if any(plan.layouts[b].inner != 1 for b in touched):
            raise _refuse(net, plan, layer, b0, "its bottoms are flattened")
        segs = [s for b, sh in zip(layer.bottoms, layer.bottom_shapes, strict=True)
                for s in (plan.layouts[b].segments if b in plan.layouts else ((None, sh[1]),))]
        plan.layouts[layer.tops[0]] = Layout(_merged(segs))
        plan.actions.append((layer, "concat"))
    elif t == "Eltwise":
        _pair(net, plan, layer)
    else:
        raise _refuse(net, plan, layer, b0, f"prune cannot rewrite {t} layers for fewer channels")


def _pair(net: Net, plan: Plan, layer: Layer) -> None:
    """Eltwise: every bottom cut alike (same segments; cut segments united into one group)."""
    lays = [plan.layouts.get(b, Layout(((None, sh[1]),))) for b, sh in
            zip(layer.bottoms, layer.bottom_shapes, strict=True)]
    first = lays[0]
    ok = all(lo.inner == first.inner and [n for _, n in lo.segments] == [n for _, n in first.segments]
             for lo in lays)
    if ok:
        for k in range(len(first.segments)):
            gs = [lo.segments[k][0] for lo in lays]
            if any(g is None for g in gs) and any(g is not None for g in gs):
                ok = False
                break
            for g in gs[1:]:
                if g is not None:
                    plan.unite(gs[0], g)
    if not ok:
        cut = plan.members(g for lo in lays for g, _ in lo.segments if g is not None)
        parts, uncut = [], []
        for name, b, lo in zip(layer.bottom_names, layer.bottoms, lays, strict=True):
            via = plan.members(g for g, _ in lo.segments if g is not None)
            if via and all(g is not None for g, _ in lo.segments):
                parts.append(f"'{name}' (cut via {', '.join(via)})")
                continue
            origin = _origin(net, b)
            src = "the net input" if origin is None else f"{origin.type} '{origin.name}'"
            parts.append(f"'{name}' (from {src}, {'partly cut' if via else 'not cut'})")
            if origin is not None and origin.type in WEIGHTED and origin.name not in cut:
                uncut.append(origin.name)
        hint = f" (add {', '.join(uncut)} to --layers)" if uncut else ""
        raise NetError(
            f"cannot cut {', '.join(repr(c) for c in cut)}: Eltwise '{layer.name}' pairs the channels of"
            f" {' and '.join(parts)}; cut all its branches alike{hint} or leave {', '.join(cut)} out",
            layer=layer.name)
    plan.layouts[layer.tops[0]] = Layout(tuple((None if g is None else plan.root(g), n) for g, n in
                                               first.segments), first.inner)
    plan.actions.append((layer, "eltwise"))


# -- structured pruning: choosing and applying ----------------------------------------------------
def filter_norms(layer: Layer, w: np.ndarray, criterion: str) -> np.ndarray:
    """Per output filter: sum of |w| (l1, Li et al.) or the L2 norm."""
    w = np.asarray(w, np.float64)
    if layer.type == "Deconvolution":
        w = np.moveaxis(w, 1, 0)
    elif layer.type == "InnerProduct" and layer.param.inner_product_param.transpose:
        w = w.T
    flat = w.reshape(w.shape[0], -1)
    if criterion == "l1":
        return np.abs(flat).sum(axis=1)
    if criterion == "l2":
        return np.sqrt((flat * flat).sum(axis=1))
    raise UsageError(f"--criterion must be l1 or l2, got '{criterion}'")


def choose_filters(net: Net, blobs, plan: Plan, ratio: float, criterion: str = "l1") -> dict[str, np.ndarray]:
    """Kept filter indices (ascending) per group root: the largest ``1 - ratio`` by summed norms."""
    if not 0.0 <= ratio < 1.0:
        raise UsageError(f"--ratio must be in [0, 1), got {ratio}")
    scores: dict[str, np.ndarray] = {}
    for t in plan.parent:
        layer = net.layer(t)
        n = filter_norms(layer, blobs[t][0], criterion)
        n = n / n.mean() if n.mean() > 0 else n
        r = plan.root(t)
        if r in scores and scores[r].shape != n.shape:
            raise NetError(f"cannot cut {', '.join(plan.members([r]))} alike: they have different filter counts")
        scores[r] = scores[r] + n if r in scores else n
    kept = {}
    for r, s in scores.items():
        keep = max(1, len(s) - count_of(ratio, len(s)))
        order = np.argsort(-s, kind="stable")
        kept[r] = np.sort(order[:keep])
    return kept


def _indices(plan: Plan, kept: Mapping[str, np.ndarray], blob: str) -> np.ndarray:
    """The surviving axis-1 entries of ``blob`` (original positions, ascending)."""
    lay = plan.layouts[blob]
    parts, off = [], 0
    for g, n in lay.segments:
        parts.append(off + (kept[plan.root(g)] if g is not None else np.arange(n)))
        off += n
    ch = np.concatenate(parts)
    return (ch[:, None] * lay.inner + np.arange(lay.inner)).reshape(-1)


@dataclass
class CutResult:
    """The pruned net (every phase's layers) and blobs, the filters kept per cut layer."""

    param: caffe_pb2.NetParameter
    blobs: dict[str, list[np.ndarray]]
    filters: dict[str, tuple[int, int]]  # cut layer -> (before, after)
    groups: list[list[str]]


def apply_cuts(net: Net, blobs, plan: Plan, kept: Mapping[str, np.ndarray]) -> CutResult:
    """Slice every touched layer's blobs and set num_output (and group) in a copy of the prototxt."""
    out = {k: list(v) for k, v in blobs.items()}
    num_output: dict[str, int] = {}
    for layer, action in plan.actions:
        _apply(net, plan, kept, layer, action, out, num_output)
    for t in plan.parent:
        layer = net.layer(t)
        idx = kept[plan.root(t)]
        w = out[t]
        ax = 1 if layer.type == "Deconvolution" or (
            layer.type == "InnerProduct" and layer.param.inner_product_param.transpose) else 0
        out[t] = [np.take(w[0], idx, axis=ax), *[np.take(b, idx, axis=0) for b in w[1:]]]
        num_output[t] = len(idx)
    param = caffe_pb2.NetParameter()
    param.CopyFrom(net.param_proto)
    built = {layer.name: layer for layer in net.layers}
    for lp in param.layer:
        if lp.name in num_output and lp == built[lp.name].param:
            if lp.type == "InnerProduct":
                lp.inner_product_param.num_output = num_output[lp.name]
            else:
                lp.convolution_param.num_output = num_output[lp.name]
                if lp.convolution_param.group > 1 or (lp.type in DEPTHWISE and lp.convolution_param.HasField("group")):
                    lp.convolution_param.group = num_output[lp.name]
    filters = {t: (int(net.layer(t).top_shapes[0][1]), len(kept[plan.root(t)])) for t in plan.parent}
    roots: dict[str, list[str]] = {}
    for t in plan.parent:
        roots.setdefault(plan.root(t), []).append(t)
    return CutResult(param, out, filters, list(roots.values()))


def _apply(net, plan, kept, layer: Layer, action: str, out, num_output) -> None:
    if action in ("target", "flatten", "concat", "eltwise"):
        return
    b = layer.bottoms[0]
    idx = _indices(plan, kept, b)
    w = out.get(layer.name)
    if action == "per_channel":
        if w is None:
            return
        if layer.type == "BatchNorm":
            out[layer.name] = [w[0][idx], w[1][idx], w[2]]
        elif layer.type == "PReLU" and layer.param.prelu_param.channel_shared:
            pass
        else:
            out[layer.name] = [a.reshape(-1)[idx] for a in w]
    elif action == "depthwise":
        out[layer.name] = [w[0][idx], *[a[idx] for a in w[1:]]]
        num_output[layer.name] = len(idx)
    elif action == "input":
        shape = net.blobs[b].shape
        if layer.type == "InnerProduct":
            rest = int(np.prod(shape[2:]))
            cols = (idx[:, None] * rest + np.arange(rest)).reshape(-1)
            ax = 0 if layer.param.inner_product_param.transpose else 1
            out[layer.name] = [np.take(w[0], cols, axis=ax), *w[1:]]
        elif layer.type == "Deconvolution":
            out[layer.name] = [w[0][idx], *w[1:]]
        else:
            out[layer.name] = [w[0][:, idx], *w[1:]]


def cut_filters(net: Net, blobs, targets: Sequence[str], ratio: float, criterion: str = "l1") -> CutResult:
    """Remove ``ratio`` of the filters of each target layer (smallest norms) and fix every reader."""
    if not targets:
        raise UsageError("--structured needs --layers naming the layers to cut")
    weighted_layers(net, targets)
    plan = plan_cuts(net, list(dict.fromkeys(targets)))
    return apply_cuts(net, blobs, plan, choose_filters(net, blobs, plan, ratio, criterion))
