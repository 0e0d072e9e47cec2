"""Truncated SVD of InnerProduct layers, as py-faster-rcnn's ``tools/compress_net.py``: the library
half of ``dnntool decompose``.

W (N x K) ~ U_r S_r V_r^T: layer ``<name>_L`` (K -> r, no bias) gets S_r V_r^T and ``<name>_U``
(r -> N) gets U_r and the original bias, so y = x W^T + b becomes two products with r (N + K)
weights instead of N K. Unlike compress_net the prototxt is rewritten here too (the pair replaces
the layer, the top keeps its name) and any InnerProduct can be chosen, not just fc6/fc7.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from dnntool.errors import NetError, UsageError
from dnntool.net import Net
from dnntool.proto import caffe_pb2


@dataclass
class SvdRow:
    """One decomposed layer: its size, the rank kept, the energy kept and the weights' error."""

    layer: str
    inputs: int  # K
    outputs: int  # N
    rank: int
    energy: float  # sum of kept squared singular values / total
    weight_error: float  # ||W - W_r||_F / ||W||_F
    params_before: int
    params_after: int


@dataclass
class SvdResult:
    """The rewritten net (every phase's layers), blobs and one row per decomposed layer."""

    param: caffe_pb2.NetParameter
    blobs: dict[str, list[np.ndarray]]
    rows: list[SvdRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def choose_rank(s: np.ndarray, rank: int | None = None, energy: float | None = None) -> int:
    """``rank`` (at most len(s)), or the smallest rank keeping ``energy`` of sum(s^2)."""
    if (rank is None) == (energy is None):
        raise UsageError("give --rank R or --energy E (one of them)")
    if rank is not None:
        if rank <= 0:
            raise UsageError(f"--rank must be positive, got {rank}")
        return min(rank, len(s))
    if not 0.0 < energy <= 1.0:
        raise UsageError(f"--energy must be in (0, 1], got {energy}")
    cum = np.cumsum(s.astype(np.float64) ** 2)
    total = cum[-1] if cum.size and cum[-1] > 0 else 1.0
    return int(min(len(s), np.searchsorted(cum / total, energy - 1e-12) + 1))


def svd_split(w: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(L = S_r V_r^T as r x K, U = U_r as N x r, singular values) of W (N x K), in float64."""
    u, s, vt = np.linalg.svd(np.asarray(w, np.float64), full_matrices=False)
    return s[:rank, None] * vt[:rank], u[:, :rank], s


def _pair(lp: caffe_pb2.LayerParameter, rank: int, axis: int) -> tuple[caffe_pb2.LayerParameter, ...]:
    """``<name>_L`` and ``<name>_U`` replacing InnerProduct ``lp`` (rules and param specs kept)."""
    low, up = caffe_pb2.LayerParameter(), caffe_pb2.LayerParameter()
    for new, suffix in ((low, "_L"), (up, "_U")):
        new.CopyFrom(lp)
        new.name = lp.name + suffix
        del new.blobs[:]
    del low.top[:]
    low.top.append(lp.name + "_L")
    del low.param[:]
    low.param.extend(lp.param[:1])
    del low.loss_weight[:]
    low.inner_product_param.num_output = rank
    low.inner_product_param.bias_term = False
    low.inner_product_param.ClearField("bias_filler")
    del up.bottom[:]
    up.bottom.append(lp.name + "_L")
    for new in (low, up):
        new.inner_product_param.ClearField("transpose")
    if axis == 1:
        up.inner_product_param.ClearField("axis")
    else:  # _L's output has axis + 1 dims: _U flattens only the last
        up.inner_product_param.axis = axis
    return low, up


def decompose(net: Net, blobs: Mapping[str, Sequence[np.ndarray]], layers: Sequence[str],
              rank: int | None = None, energy: float | None = None) -> SvdResult:
    """Replace each named InnerProduct by its rank-r ``_L``/``_U`` pair."""
    if not layers:
        raise UsageError("--layers must name the InnerProduct layers to decompose (e.g. fc6,fc7)")
    built = {layer.name: layer for layer in net.layers}
    names = {lp.name for lp in net.param_proto.layer}
    out = {k: list(v) for k, v in blobs.items()}
    res = SvdResult(caffe_pb2.NetParameter(), out)
    plan: dict[str, tuple[int, int]] = {}
    for name in dict.fromkeys(layers):
        layer = built.get(name)
        if layer is None or layer.type != "InnerProduct":
            ips = [x.name for x in net.layers if x.type == "InnerProduct"]
            raise UsageError(f"--layers: '{name}' is not an InnerProduct of net '{net.name}'"
                             f" (these are: {', '.join(ips) or 'none'})")
        if any(p.shared_from is not None or p.share_name for p in layer.params):
            raise NetError(f"InnerProduct '{name}' shares its weights with other layers", layer=name)
        for suffix in ("_L", "_U"):
            if name + suffix in names:
                raise NetError(f"cannot decompose '{name}': the net already has a layer '{name}{suffix}'",
                               layer=name)
        p = layer.param.inner_product_param
        w = np.asarray(out[name][0], np.float64)
        w = w.T if p.transpose else w
        n, k = w.shape
        low, up, s = svd_split(w, min(n, k))
        r = choose_rank(s, rank, energy)
        if rank is not None and rank > len(s):
            res.notes.append(f"{name}: rank {rank} exceeds min(N, K) = {len(s)}; using {len(s)}")
        low, up = low[:r], up[:, :r]
        err = float(np.linalg.norm(w - up @ low) / max(np.linalg.norm(w), 1e-30))
        kept = float((s[:r] ** 2).sum() / max((s ** 2).sum(), 1e-30))
        bias = n if p.bias_term else 0
        row = SvdRow(name, k, n, r, kept, err, n * k + bias, r * (n + k) + bias)
        if row.params_after >= row.params_before:
            res.notes.append(f"{name}: rank {r} does not reduce the params ({row.params_before:,} ->"
                             f" {row.params_after:,}; it pays up to rank {(n * k - 1) // (n + k)})")
        res.rows.append(row)
        out[name + "_L"] = [low.astype(np.float32)]
        out[name + "_U"] = [up.astype(np.float32), *out[name][1:]]
        del out[name]
        plan[name] = (r, net.layer(name).impl.canonical_axis(p.axis, len(layer.bottom_shapes[0])))
    res.param = _rewrite(net, plan)
    return res


def _rewrite(net: Net, plan: Mapping[str, tuple[int, int]]) -> caffe_pb2.NetParameter:
    built = {layer.name: layer for layer in net.layers}
    new = caffe_pb2.NetParameter()
    new.CopyFrom(net.param_proto)
    del new.layer[:]
    for lp in net.param_proto.layer:
        this = built.get(lp.name)
        if lp.name in plan and this is not None and lp == this.param:
            new.layer.extend(_pair(lp, *plan[lp.name]))
        else:
            new.layer.append(lp)
    return new


def decompose_files(net_path, weights_path, prefix: str | os.PathLike[str], layers: Sequence[str],
                    rank: int | None = None, energy: float | None = None, input_shapes=None,
                    batches: int = 3, db: str | None = None, device: str = "auto", repeat: int = 3):
    """``dnntool decompose``: write the decomposed net and report params and output error.

    The error is measured on the timed batches at each decomposed layer's top (its Caffe blob, after
    any in-place layer) and at the net's outputs.
    """
    from dnntool.io.caffemodel import load_weights
    from dnntool.slim.batches import load_test_net
    from dnntool.slim.report import all_blobs, feature_outputs, finish_caffe, measure_for

    net = load_test_net(net_path, input_shapes, db)
    weights = load_weights(weights_path)
    res = decompose(net, all_blobs(net, weights), layers, rank, energy)
    m = measure_for(net, batches, db, device, repeat)
    tops = [net.layer(r.layer).top_names[0] for r in res.rows]
    outs = list(dict.fromkeys(tops + [net.blobs[t].name for t in feature_outputs(net)]))
    rep = finish_caffe("decompose", net, weights, res.param, res.blobs, prefix, m, str(weights_path),
                       input_shapes, outputs=outs)
    rep.columns = ["layer", "K x N", "rank", "energy kept", "weight error", "params before", "params after",
                   "top max rel error"]
    for r, top in zip(res.rows, tops, strict=True):
        d = rep.output_diff.get(top)
        rep.rows.append([r.layer, f"{r.inputs} x {r.outputs}", r.rank, f"{100 * r.energy:.2f}%",
                         float(f"{r.weight_error:.4g}"), r.params_before, r.params_after,
                         float(f"{d.max_rel:.4g}") if d is not None else None])
    rep.notes += res.notes
    return rep
