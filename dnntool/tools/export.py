"""Nets with weights as ONNX models: ``export-onnx``, ``init-weights`` and the translation that
``test`` and ``featuremap-dump`` share.

An exported model records in ``metadata_props`` what ONNX cannot say: each output's Caffe blob
name and loss weight (``dnntool.outputs``) and the data layer feeding each input
(``dnntool.inputs``), so ``dnntool test model.onnx`` prints Caffe's lines for it too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dnntool.errors import DnnToolError
from dnntool.net import Net

if TYPE_CHECKING:
    from dnntool.io.caffemodel import Weights
    from dnntool.translate.forward import Translation

OUTPUTS_KEY = "dnntool.outputs"
INPUTS_KEY = "dnntool.inputs"


def check_device(device: str) -> None:
    """Fail early, in one line, on a bad ``--device`` or ``cuda`` without a GPU or CUDA build."""
    from dnntool.onnxgraph.runtime import Device, providers_for

    providers_for(Device.parse(device))


def load_arrays(net: Net, weights: str | os.PathLike[str] | Weights) -> dict[str, list]:
    """Each layer's parameter arrays from a caffemodel path (or loaded Weights), checked against the net."""
    from dnntool.io.caffemodel import load_weights
    from dnntool.net.weights import layer_arrays

    w = load_weights(weights) if isinstance(weights, (str, os.PathLike)) else weights
    return layer_arrays(net, w)


def loss_weights(net: Net) -> dict[str, float]:
    """SSA blob id -> loss weight, for every top with a non-zero weight (Caffe's blob_loss_weights)."""
    return {t: w for layer in net.layers for t, w in zip(layer.tops, layer.loss_weights, strict=False) if w}


def blob_label(net: Net, blob_id: str) -> str:
    """The Caffe name of a blob value (``(automatic)`` for a loss layer's unnamed top, as Caffe)."""
    return net.blobs[blob_id].name


def translate(net: Net, weights, outputs: Sequence[str] | str | None = None,
              dynamic_batch: bool = False, extra_loss: bool = False) -> Translation:
    """``to_onnx`` with the caffemodel checked against the net and dnntool metadata attached.

    ``extra_loss`` also outputs loss-weighted tops that other layers consume, so a caller can add
    them into the iteration loss as Caffe does.
    """
    from dnntool.translate.forward import to_onnx

    arrays = load_arrays(net, weights)
    if extra_loss and outputs is None:
        outs = [i for i in net.output_ids()
                if net.blobs[i].producer is not None and net.layer(net.blobs[i].producer).impl.translatable]
        outputs = outs + [t for t in loss_weights(net) if t not in outs]
    tr = to_onnx(net, arrays, outputs=outputs, dynamic_batch=dynamic_batch)
    lw = loss_weights(net)
    meta_out = [{"output": o, "blob": blob_label(net, o), "loss_weight": lw.get(o, 0.0)} for o in tr.outputs]
    meta_in = []
    for layer in net.layers:
        if layer.impl.is_data:
            meta_in += [{"input": t, "layer": layer.name, "type": layer.type} for t in layer.tops if t in tr.inputs]
    set_metadata(tr.model, OUTPUTS_KEY, meta_out)
    set_metadata(tr.model, INPUTS_KEY, meta_in)
    return tr


def set_metadata(model, key: str, value) -> None:
    for p in model.metadata_props:
        if p.key == key:
            p.value = json.dumps(value)
            return
    p = model.metadata_props.add()
    p.key, p.value = key, json.dumps(value)


def get_metadata(model, key: str):
    """A JSON metadata value of an ONNX model, or None."""
    for p in model.metadata_props:
        if p.key == key:
            try:
                return json.loads(p.value)
            except ValueError:
                return None
    return None


# -- export-onnx ---------------------------------------------------------------------------------------
@dataclass
class ExportResult:
    """What ``export_onnx`` wrote."""

    path: str
    inputs: list[tuple[str, list]] = field(default_factory=list)  # (name, dims; "N" when dynamic)
    outputs: list[tuple[str, list]] = field(default_factory=list)
    opset: int = 0
    nodes: int = 0
    bytes: int = 0


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def export_onnx(net: Net, weights, out: str | os.PathLike[str], outputs: Sequence[str] | str | None = None,
                dynamic_batch: bool = False) -> ExportResult:
    """Translate ``net`` with its caffemodel, check the model with ``onnx.checker`` and write it."""
    import onnx

    from dnntool.io.atomic import write_bytes

    tr = translate(net, weights, outputs=outputs, dynamic_batch=dynamic_batch)
    model = tr.model
    data = model.SerializeToString()
    try:
        if len(data) < 2**31 - 2**20:
            onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:  # a translator bug: say so in one line
        raise DnnToolError(f"the ONNX model fails onnx.checker: {' '.join(str(e).split())[:300]}") from None
    write_bytes(out, data)
    g = model.graph
    return ExportResult(
        path=str(out), inputs=[(i.name, _dims(i)) for i in g.input],
        outputs=[(o.name, _dims(o)) for o in g.output],
        opset=max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0),
        nodes=len(g.node), bytes=len(data),
    )


# -- init-weights --------------------------------------------------------------------------------------
@dataclass
class InitResult:
    """What ``init_weights_file`` wrote: the file and the filled layers with their blob shapes."""

    path: str
    layers: list[tuple[str, str, list[tuple[int, ...]]]]  # (name, type, blob shapes)
    values: int


def init_weights_file(net: Net, out: str | os.PathLike[str], seed: int = 0) -> InitResult:
    """Fill every parameter blob from its prototxt filler and write a caffemodel (pycaffe's ``net.save``).

    Layers sharing a blob (``param { name: ... }``) write the owner's values, as Caffe's Net::ToProto.
    """
    from dnntool.io.caffemodel import save_caffemodel
    from dnntool.net.weights import init_weights, layer_arrays

    w = init_weights(net, seed)
    blobs = layer_arrays(net, w)
    save_caffemodel(out, [layer.param for layer in net.layers], blobs, name=net.name)
    rows = [(layer.name, layer.type, [tuple(a.shape) for a in blobs[layer.name]])
            for layer in net.layers if layer.name in blobs]
    return InitResult(str(out), rows, sum(int(a.size) for arrs in w.blobs.values() for a in arrs))
