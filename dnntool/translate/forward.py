"""Net -> ONNX forward graph: data-layer tops become graph inputs, parameters initializers, and each
layer emits its own nodes (``LayerDef.forward``). Tensor names are the Net's SSA blob ids: a blob's
Caffe name, or ``name@layer`` for the value an in-place layer wrote.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from dnntool.errors import NetError
from dnntool.layers.base import Emit
from dnntool.net import Net
from dnntool.net.net import Layer


@dataclass
class Translation:
    """A translated net: the model and how Caffe blob names map to its tensors."""

    model: object  # onnx.ModelProto
    inputs: list[str]  # graph input names (= Caffe names of data-layer tops)
    outputs: list[str]  # graph output names (SSA ids)
    output_blobs: dict[str, str] = field(default_factory=dict)  # SSA id -> Caffe blob name
    params: dict[str, list[str]] = field(default_factory=dict)  # layer -> param tensor names


def param_name(layer: str, role: str) -> str:
    """The initializer/input name of a parameter blob."""
    return f"{layer}::{role}"


def _translatable_layers(net: Net) -> set[str]:
    """Layers that translate and whose inputs all come from layers that do (or from data)."""
    ok: set[str] = set()
    for layer in net.layers:
        if layer.impl.is_data or (layer.impl.translatable and all(
                net.blobs[b].producer in ok for b in layer.bottoms)):
            ok.add(layer.name)
    return ok


def _resolve_outputs(net: Net, outputs: Sequence[str] | str | None) -> list[str]:
    ok = _translatable_layers(net)
    if outputs is None:
        # the net's outputs; where one comes from a layer with no translation (DetectionOutput,
        # Python...), the nearest translatable blobs feeding it stand in for it
        out: list[str] = []
        stack = list(reversed(net.output_ids()))
        seen: set[str] = set()
        while stack:
            tid = stack.pop()
            if tid in seen:
                continue
            seen.add(tid)
            producer = net.blobs[tid].producer
            if producer is None or producer in ok:
                if producer is not None and not net.layer(producer).impl.is_data:
                    out.append(tid)
            else:
                stack.extend(reversed(net.layer(producer).bottoms))
        return out
    if outputs == "all":
        return [t for layer in net.layers if not layer.impl.is_data and layer.name in ok for t in layer.tops]
    out = []
    for name in outputs:
        out.append(net.blob(name).id)
    return out


def _reachable(g, inputs: Sequence[str]) -> set[str]:
    """Tensors computed (transitively) from the graph inputs."""
    seen = set(inputs)
    for node in g.nodes:
        if any(i in seen for i in node.input):
            seen.update(node.output)
    return seen


def _needed_layers(net: Net, outputs: list[str]) -> list[Layer]:
    producer = {t: layer for layer in net.layers for t in layer.tops}
    need: set[str] = set()
    stack = list(outputs)
    while stack:
        tid = stack.pop()
        layer = producer.get(tid)
        if layer is None or layer.name in need:
            continue
        need.add(layer.name)
        stack.extend(layer.bottoms)
    return [layer for layer in net.layers if layer.name in need]


@dataclass
class Emitted:
    """What :func:`emit_layers` wrote into a builder."""

    inputs: list[str] = field(default_factory=list)
    params: dict[str, list[str]] = field(default_factory=dict)  # layer -> param tensor names
    param_layers: dict[str, tuple[str, int]] = field(default_factory=dict)  # tensor -> (owner, index)
    node_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)  # layer -> [start, end) of g.nodes
    extra: dict[str, dict] = field(default_factory=dict)  # layer -> Emit.extra (e.g. batch statistics)


def emit_layers(g, net: Net, layers: list[Layer], arrays, out_ids: Sequence[str], batch: str | None = None,
                params_as_inputs: bool = False, train: bool = False) -> Emitted:
    """Emit graph inputs, parameters and every layer's nodes into builder ``g``."""
    em = Emitted()
    consumed = {b for layer in layers for b in layer.bottoms}
    for layer in layers:
        if layer.impl.is_data:
            for tid, shape in zip(layer.tops, layer.top_shapes, strict=True):
                if tid in consumed or tid in out_ids:
                    g.input(tid, [batch or d for d in shape[:1]] + list(shape[1:]))
                    em.inputs.append(tid)
    for layer in layers:
        if layer.impl.is_data:
            continue
        if not layer.impl.translatable:
            raise NetError(
                f"layer '{layer.name}' ({layer.type}) has no ONNX translation; choose outputs before it"
                f" (e.g. --outputs {','.join(layer.bottom_names) or '...'})", layer.loc, layer=layer.name,
            )
        pnames = []
        if layer.params:
            src = arrays.get(layer.name) if arrays is not None else None
            if src is None and not params_as_inputs:
                raise NetError(f"layer '{layer.name}' ({layer.type}) has no weights", layer.loc, layer=layer.name)
            for k, p in enumerate(layer.params):
                owner = p.shared_from or layer.name
                pname = param_name(owner, p.share_name or p.blob.role)
                if pname not in em.param_layers:
                    if params_as_inputs:
                        g.input(pname, list(p.shape))
                    else:
                        g.initializer(pname, np.asarray(src[k], dtype=g.dtype).reshape(p.shape))
                    em.param_layers[pname] = (owner, k)
                pnames.append(pname)
            em.params[layer.name] = pnames
        g.scope = layer.name
        e = Emit(g=g, bottoms=list(layer.bottoms), tops=list(layer.tops), params=pnames,
                 bottom_shapes=list(layer.bottom_shapes), top_shapes=list(layer.top_shapes),
                 train=train, batch=batch)
        start = len(g.nodes)
        layer.impl.forward(e)
        em.node_ranges[layer.name] = (start, len(g.nodes))
        if e.extra:
            em.extra[layer.name] = e.extra
        g.scope = ""
    return em


def to_onnx(
    net: Net,
    arrays: Mapping[str, Sequence[np.ndarray]] | None = None,
    outputs: Sequence[str] | str | None = None,
    dynamic_batch: bool = False,
    params_as_inputs: bool = False,
    train: bool = False,
    dtype=np.float32,
    name: str | None = None,
):
    """Translate ``net`` (with ``arrays[layer]`` for its parameters) into an ONNX model.

    ``outputs``: Caffe blob names (their current values), ``"all"`` for every layer top, or None
    for the net's outputs. ``params_as_inputs`` makes parameters graph inputs (for training graphs
    and for sharing one graph between weight sets); otherwise they are initializers.
    """
    from dnntool.onnxgraph.builder import GraphBuilder

    g = GraphBuilder(name or net.name or "net", dtype=dtype)
    out_ids = _resolve_outputs(net, outputs)
    if not out_ids:
        raise NetError(f"net '{net.name}' has no outputs to translate")
    layers = _needed_layers(net, out_ids)
    batch = "N" if dynamic_batch else None
    g.reserve(net.blobs)
    em = emit_layers(g, net, layers, arrays, out_ids, batch, params_as_inputs, train)
    tr = Translation(model=None, inputs=em.inputs, outputs=list(out_ids), params=em.params)
    from_inputs = _reachable(g, em.inputs)
    for tid in out_ids:
        blob = net.blobs[tid]
        dyn = batch if tid in from_inputs else None  # constants (PriorBox) keep their static shape
        g.output(tid, [dyn or d for d in blob.shape[:1]] + list(blob.shape[1:]))
        tr.output_blobs[tid] = blob.name
    tr.model = g.model(doc=f"translated from {net.source or net.name} by dnntool")
    return tr
