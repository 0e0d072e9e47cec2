"""Fold BatchNorm (and the Scale after it) into the Convolution, Deconvolution, DepthwiseConvolution
or InnerProduct that feeds it: the library half of ``dnntool fold-bn``.

At test time BatchNorm is y = (x - m) / sqrt(v + eps) with m = blob0 / f, v = blob1 / f (f the scale
factor blob, statistics 0 when f = 0) and Scale is z = gamma * y + beta, so the pair is z = a * x + c
per channel with a = gamma / sqrt(v + eps), c = beta - a * m. A layer computing x = W * in + b
absorbs it as W' = a * W (per output channel) and b' = a * b + c, gaining a bias if it had none.

The pattern is matched on the graph (the blob a BatchNorm reads and who produces it), not on the
file order; in-place layers are followed through their SSA values. A BatchNorm is left alone, with
the reason in the result, when its input does not come from one of those layers, when that input
also feeds other layers, or when it uses batch statistics at test time. Each BatchNorm's own eps
is used (Caffe's default 1e-5 only when the prototxt gives none).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from dnntool.net import Net
from dnntool.net.net import Layer
from dnntool.proto import caffe_pb2

FOLD_INTO = ("Convolution", "Deconvolution", "DepthwiseConvolution", "ConvolutionDepthwise", "InnerProduct")


@dataclass
class Fold:
    """One folded pattern: the layer that absorbed it, the BatchNorm and Scale removed, its new top."""

    into: str
    type: str
    batchnorm: str | None
    scale: str | None
    top: str
    added_bias: bool


@dataclass
class Kept:
    """A BatchNorm or Scale left in the net, and why."""

    layer: str
    type: str
    reason: str


@dataclass
class FoldResult:
    """The folded net (all phases' layers, as in the input file) and the blobs of every layer."""

    param: caffe_pb2.NetParameter
    blobs: dict[str, list[np.ndarray]]
    folded: list[Fold] = field(default_factory=list)
    kept: list[Kept] = field(default_factory=list)


def _layers_of(net: Net) -> dict[str, Layer]:
    return {layer.name: layer for layer in net.layers}


def _channel_scales(layer: Layer, arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(a, c) of a BatchNorm (test-time statistics) in float64."""
    mean, var, f = (np.asarray(x, np.float64).reshape(-1) for x in arrays[:3])
    inv_f = 0.0 if f[0] == 0 else 1.0 / f[0]  # Caffe: a zero scale factor means zero statistics
    eps = float(layer.param.batch_norm_param.eps)
    a = 1.0 / np.sqrt(var * inv_f + eps)
    return a, -mean * inv_f * a


def _why_not_batchnorm(net: Net, layers: dict[str, Layer], bn: Layer, owner: dict[str, str]) -> str | None:
    """Why ``bn`` cannot be folded into the layer producing its input (None if it can)."""
    p = bn.param.batch_norm_param
    if p.HasField("use_global_stats") and not p.use_global_stats:
        return "it uses batch statistics at test time (use_global_stats: false)"
    src = bn.bottoms[0]
    producer = owner.get(src, net.blobs[src].producer)
    if producer is None:
        return f"its input '{bn.bottom_names[0]}' is a net input"
    prod = layers[producer]
    if prod.impl.is_data:
        return f"its input '{bn.bottom_names[0]}' comes from data layer '{prod.name}'"
    if prod.type not in FOLD_INTO:
        return (f"its input '{bn.bottom_names[0]}' comes from {prod.type} '{prod.name}', not a Convolution,"
                " Deconvolution, DepthwiseConvolution or InnerProduct")
    others = [c for c in net.blobs[src].consumers if c != bn.name]
    if others:
        return f"its input '{bn.bottom_names[0]}' also feeds {', '.join(repr(o) for o in others)}"
    return _why_not_producer(prod)


def _why_not_producer(prod: Layer) -> str | None:
    if len(prod.bottoms) != 1 or len(prod.tops) != 1:
        return f"{prod.type} '{prod.name}' has {len(prod.bottoms)} bottoms sharing its filters"
    if any(p.shared_from is not None or p.share_name for p in prod.params):
        return f"{prod.type} '{prod.name}' shares its weights with other layers (param name)"
    top = prod.top_shapes[0]
    if prod.type == "InnerProduct":
        if len(top) != 2:
            return f"InnerProduct '{prod.name}' outputs {list(top)}: BatchNorm's channels are not its outputs"
    elif prod.param.convolution_param.axis not in (1, -len(top) + 1):
        return f"{prod.type} '{prod.name}' has channels on axis {prod.param.convolution_param.axis}"
    return None


def _why_not_scale(net: Net, scale: Layer, src: str) -> str | None:
    """Why a Scale reading the folded value ``src`` cannot join the fold (None if it can)."""
    p = scale.param.scale_param
    if len(scale.bottoms) != 1:
        return "its factors come from a second bottom, not from learned blobs"
    shape = net.blobs[src].shape
    axis = p.axis + len(shape) if p.axis < 0 else p.axis
    if axis != 1 or p.num_axes != 1:
        return f"it scales axes from {p.axis} (num_axes {p.num_axes}), not one factor per channel"
    others = [c for c in net.blobs[src].consumers if c != scale.name]
    if others:
        return f"its input also feeds {', '.join(repr(o) for o in others)}"
    if any(q.shared_from is not None or q.share_name for q in scale.params):
        return "it shares its blobs with other layers (param name)"
    return None


def _next_scale(net: Net, layers: dict[str, Layer], blob: str) -> Layer | None:
    cons = net.blobs[blob].consumers
    return next((layers[c] for c in cons if layers[c].type == "Scale" and layers[c].bottoms[0] == blob), None)


def scale_weights(prod: Layer, w: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``w`` with output channel k multiplied by ``a[k]`` (each layer type keeps outputs elsewhere)."""
    w = np.asarray(w, np.float64)
    if prod.type == "InnerProduct":
        return w * (a[None, :] if prod.param.inner_product_param.transpose else a[:, None])
    if prod.type == "Deconvolution":  # (C_in, C_out/group, k...): output o = g * (C_out/group) + j
        group = prod.param.convolution_param.group or 1
        cin, cpg = w.shape[0], w.shape[1]
        ws = w.reshape(group, cin // group, cpg, -1) * a.reshape(group, 1, cpg, 1)
        return ws.reshape(w.shape)
    return w * a.reshape(-1, *([1] * (w.ndim - 1)))  # Convolution / depthwise: (C_out, C_in/g, k...)


def fold_bn(net: Net, blobs: Mapping[str, Sequence[np.ndarray]]) -> FoldResult:
    """Fold every foldable BatchNorm (+ Scale) of ``net``; ``blobs``: every layer's arrays by name.

    Returns a copy of the net's NetParameter (every phase's layers) without the folded layers, with
    the absorbing layers' bias_term set and tops renamed to the last folded top, and the new blobs.
    """
    layers = _layers_of(net)
    out = {k: [np.asarray(a) for a in v] for k, v in blobs.items()}
    res = FoldResult(caffe_pb2.NetParameter(), out)
    owner: dict[str, str] = {}  # a folded value (SSA id) -> the layer now producing it
    coef: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # absorbing layer -> accumulated (a, c)
    removed: set[str] = set()
    renamed: dict[str, str] = {}
    for layer in net.layers:
        if layer.type != "BatchNorm":
            continue
        why = _why_not_batchnorm(net, layers, layer, owner)
        if why is not None:
            res.kept.append(Kept(layer.name, layer.type, why))
            continue
        prod = layers[owner.get(layer.bottoms[0], net.blobs[layer.bottoms[0]].producer)]
        a, c = _channel_scales(layer, out[layer.name])
        removed.add(layer.name)
        last, scale_name = layer, None
        scale = _next_scale(net, layers, layer.tops[0])
        if scale is not None:
            why = _why_not_scale(net, scale, layer.tops[0])
            if why is None:
                gamma = np.asarray(out[scale.name][0], np.float64).reshape(-1)
                beta = (np.asarray(out[scale.name][1], np.float64).reshape(-1)
                        if scale.param.scale_param.bias_term else 0.0)
                a, c = a * gamma, c * gamma + beta
                removed.add(scale.name)
                last, scale_name = scale, scale.name
            else:
                res.kept.append(Kept(scale.name, scale.type, why))
        a0, c0 = coef.get(prod.name, (np.ones_like(a), np.zeros_like(a)))
        coef[prod.name] = (a0 * a, c0 * a + c)  # a later BatchNorm on an already folded output
        owner[last.tops[0]] = prod.name
        renamed[prod.name] = last.top_names[0]
        res.folded.append(Fold(prod.name, prod.type, layer.name, scale_name, last.top_names[0],
                               not _has_bias(prod)))
    for name, (a, c) in coef.items():
        prod = layers[name]
        w = out[name]
        b = np.asarray(w[1], np.float64).reshape(-1) if _has_bias(prod) else np.zeros_like(a)
        out[name] = [scale_weights(prod, w[0], a).astype(np.float32), (a * b + c).astype(np.float32)]
    for name in removed:
        out.pop(name, None)
    res.param = _rewrite(net, removed, renamed)
    return res


def _has_bias(layer: Layer) -> bool:
    return any(p.blob.role == "bias" for p in layer.params)


def _rewrite(net: Net, removed: set[str], renamed: Mapping[str, str]) -> caffe_pb2.NetParameter:
    """The input NetParameter without ``removed`` layers, absorbing layers biased and renamed."""
    built = _layers_of(net)
    param = caffe_pb2.NetParameter()
    param.CopyFrom(net.param_proto)
    keep = []
    for lp in param.layer:
        this = built.get(lp.name)
        is_ours = this is not None and lp == this.param  # the phase-filtered layer, not a namesake
        if is_ours and lp.name in removed:
            continue
        if is_ours and lp.name in renamed:
            lp.top[0] = renamed[lp.name]
            if lp.type == "InnerProduct":
                lp.inner_product_param.bias_term = True
            else:
                lp.convolution_param.bias_term = True
        keep.append(lp)
    new = caffe_pb2.NetParameter()
    new.CopyFrom(param)
    del new.layer[:]
    new.layer.extend(keep)
    return new


def fold_bn_files(net_path: str | os.PathLike[str], weights_path: str | os.PathLike[str],
                  prefix: str | os.PathLike[str], input_shapes=None, batches: int = 3,
                  db: str | None = None, device: str = "auto", repeat: int = 3):
    """``dnntool fold-bn``: fold, write ``PREFIX.prototxt``/``.caffemodel``, report before/after.

    The outputs of both nets are compared on the timed batches (``output_diff``).
    """
    from dnntool.io.caffemodel import load_weights
    from dnntool.slim.batches import load_test_net
    from dnntool.slim.report import all_blobs, finish_caffe, measure_for

    net = load_test_net(net_path, input_shapes, db)
    weights = load_weights(weights_path)
    res = fold_bn(net, all_blobs(net, weights))
    m = measure_for(net, batches, db, device, repeat)
    rep = finish_caffe("fold-bn", net, weights, res.param, res.blobs, prefix, m, str(weights_path),
                       input_shapes)
    rep.columns = ["layer", "type", "absorbed", "new top", "note"]
    rep.rows = [[f.into, f.type, " + ".join(x for x in (f.batchnorm, f.scale) if x), f.top,
                 "bias added" if f.added_bias else ""] for f in res.folded]
    rep.rows += [[k.layer, k.type, "(kept)", "", k.reason] for k in res.kept]
    rep.extra["folded"] = len(res.folded)
    rep.extra["kept"] = [{"layer": k.layer, "type": k.type, "reason": k.reason} for k in res.kept]
    if not res.folded:
        rep.notes.append("nothing to fold: the net has no BatchNorm after a Convolution, Deconvolution,"
                         " DepthwiseConvolution or InnerProduct")
    return rep
