"""Run two models on the same inputs and compare every blob they share by name: the library half of
``dnntool compare``, for checking what fold-bn, prune, quantize or decompose did to each layer.

A model is a prototxt with its caffemodel (translated to ONNX) or an ``.onnx`` file. A Caffe blob is
compared at its final value (after any in-place layers, as Caffe's ``net.blobs`` shows it); in an
ONNX model the tensor of that name, or its last in-place value ``name@layer`` from our exporter.
Differences are normalised by the first model's magnitude (see :func:`dnntool.slim.report.diff`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dnntool.errors import DnnToolError, UsageError
from dnntool.net import Net
from dnntool.slim.batches import db_batches, random_batches, run_model
from dnntool.slim.report import Diff, diff, format_table


@dataclass
class Model:
    """One side: the ONNX model to run, its blobs (Caffe name -> tensor) and, for Caffe, the Net."""

    label: str
    model: object  # onnx.ModelProto
    blobs: dict[str, str]
    net: Net | None = None


def split_models(args: Sequence[str]) -> list[list[str]]:
    """``NET W NET W``, ``NET W M.onnx``, ``A.onnx B.onnx``...: exactly two models."""
    out, i = [], 0
    while i < len(args):
        if str(args[i]).endswith(".onnx"):
            out.append([args[i]])
            i += 1
        else:
            if i + 1 >= len(args) or str(args[i + 1]).endswith(".onnx"):
                raise UsageError(f"'{args[i]}' needs its .caffemodel after it")
            out.append([args[i], args[i + 1]])
            i += 2
    if len(out) != 2:
        raise UsageError(f"give two models (NET WEIGHTS or an .onnx each), got {len(out)}")
    return out


def tensor_types(model) -> dict[str, int]:
    """Element type of every tensor ONNX shape inference can type."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # an op onnx cannot infer: the graph's own declarations only
        inferred = model
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]}
    types.update({i.name: i.data_type for i in g.initializer})
    return types


def with_outputs(model, names: Sequence[str]):
    """A copy of ``model`` that also outputs the tensors ``names``."""
    from onnx import TensorProto, helper

    m = type(model)()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    types = tensor_types(model)
    for n in names:
        if n not in have:
            m.graph.output.append(helper.make_tensor_value_info(n, types.get(n) or TensorProto.FLOAT, None))
            have.add(n)
    return m


def onnx_blobs(model) -> dict[str, str]:
    """Caffe blob name -> tensor: each node output, an in-place value ``name@layer`` counting as
    ``name`` (the last one in node order wins, as the final value)."""
    out: dict[str, str] = {}
    for node in model.graph.node:
        for t in node.output:
            if t:
                out[t.split("@", 1)[0]] = t
    return out


def load_model(spec: Sequence[str], input_shapes=None) -> Model:
    """A side from ``[NET, WEIGHTS]`` or ``[M.onnx]``."""
    if len(spec) == 1:
        import onnx

        try:
            model = onnx.load(str(spec[0]))
        except Exception as e:  # onnx raises DecodeError/OSError/...
            raise DnnToolError(f"{spec[0]}: cannot read the ONNX model: {' '.join(str(e).split())[:200]}") from None
        return Model(Path(str(spec[0])).name, model, onnx_blobs(model))
    from dnntool.tools.export import load_arrays
    from dnntool.translate.forward import to_onnx

    net = Net.from_prototxt(spec[0], "test", input_shapes=input_shapes)
    names = list(dict.fromkeys(t for layer in net.layers if not layer.impl.is_data and layer.impl.translatable
                               for t in layer.top_names if t != "(automatic)"))
    tr = to_onnx(net, load_arrays(net, spec[1]), outputs=names)
    return Model(Path(str(spec[0])).name, tr.model, dict(zip(names, tr.outputs, strict=True)), net)


@dataclass
class BlobDiff:
    """One blob present in both models."""

    name: str
    shape: list[int]
    diff: Diff


@dataclass
class CompareResult:
    """Per shared blob, how far model B is from model A on the same batches."""

    a: str
    b: str
    batches: int
    batch: int
    data: str
    provider: str
    rows: list[BlobDiff] = field(default_factory=list)
    only_a: list[str] = field(default_factory=list)
    only_b: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        cells = [["blob", "shape", "max abs", "mean abs", "max rel", "mean rel"]]
        for r in self.rows:
            d = r.diff
            cells.append([r.name, "x".join(map(str, r.shape)) or "scalar", f"{d.max_abs:.4g}", f"{d.mean_abs:.4g}",
                          f"{d.max_rel:.4g}", f"{d.mean_rel:.4g}"])
        out = [f"{self.b} vs {self.a}: {len(self.rows)} blobs in both, {self.batches} {self.data}"
               f" batch(es) of {self.batch} on {self.provider} (rel = |diff| / |{self.a}|, max and mean)"]
        out += format_table(cells)
        for label, names in ((self.a, self.only_a), (self.b, self.only_b)):
            if names:
                out.append(f"only in {label}: {', '.join(names)}")
        return out

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "batches": self.batches, "batch": self.batch, "data": self.data,
                "provider": self.provider,
                "blobs": [{"name": r.name, "shape": r.shape, **r.diff.to_dict()} for r in self.rows],
                "only_a": self.only_a, "only_b": self.only_b}


def _batches(a: Model, b: Model, count: int | None, db, images, seed: int) -> tuple[list[dict], str]:
    net = a.net or b.net
    if net is None:
        if db is not None or images:
            raise UsageError("--db/--image need a prototxt model on one side (its transform_param)")
        shapes = {i.name: [d.dim_value or 1 for d in i.type.tensor_type.shape.dim] for i in a.model.graph.input
                  if i.name not in {x.name for x in a.model.graph.initializer}}
        rng = np.random.default_rng(seed)
        return [{k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
                for _ in range(count or 1)], "random"
    from dnntool.slim.batches import input_layer

    batch = input_layer(net).top_shapes[0][0]
    if images:
        n = count or math.ceil(len(images) / batch)
        return db_batches(net, n, images=list(images)), "image"
    if db is not None:
        return db_batches(net, count or 1, db), Path(str(db)).name
    return random_batches(net, count or 1, seed), "random"


def _feeds(model: Model, batches: list[dict]) -> list[dict]:
    """The batches keyed by ``model``'s input names (a single image input may be named otherwise)."""
    inits = {i.name for i in model.model.graph.initializer}
    names = [i.name for i in model.model.graph.input if i.name not in inits]
    given = list(batches[0])
    if all(n in batches[0] for n in names):
        return batches
    if len(names) == 1:
        return [{names[0]: b[given[0]]} for b in batches]
    raise UsageError(f"{model.label}: inputs {', '.join(names)} do not match {', '.join(given)}")


def compare(a_spec: Sequence[str], b_spec: Sequence[str], images: Sequence[str] | None = None,
            db: str | os.PathLike[str] | None = None, batches: int | None = None,
            blobs: Sequence[str] | None = None, input_shapes=None, device: str = "auto",
            seed: int = 0) -> CompareResult:
    """Run A and B on the same batches (random, ``images`` or ``db`` records through the input
    layer's transform) and compare the blobs they share by name, in A's order."""
    a = load_model(a_spec, input_shapes)
    b = load_model(b_spec, input_shapes)
    if a.net is not None and b.net is not None:
        shapes = {layer.tops[0]: layer.top_shapes[0] for layer in a.net.layers if layer.impl.is_data}
        if any(b.net.blobs.get(k) is not None and b.net.blobs[k].shape != s for k, s in shapes.items()):
            b = load_model(b_spec, {**(input_shapes or {}), **shapes})
    data, where = _batches(a, b, batches, db, images, seed)
    common = [n for n in a.blobs if n in b.blobs]
    if blobs:
        missing = [n for n in blobs if n not in common]
        if missing:
            raise UsageError(f"--blobs: {', '.join(missing)} not in both models (shared: {', '.join(common[:12])}"
                             f"{', ...' if len(common) > 12 else ''})")
        common = list(blobs)
    if not common:
        raise DnnToolError(f"{a.label} and {b.label} share no blob names")
    ra = run_model(with_outputs(a.model, [a.blobs[n] for n in common]), _feeds(a, data),
                   [a.blobs[n] for n in common], device, repeat=0)
    rb = run_model(with_outputs(b.model, [b.blobs[n] for n in common]), _feeds(b, data),
                   [b.blobs[n] for n in common], device, repeat=0)
    # unmatched names are listed for Caffe models only (an ONNX graph has many internal tensors)
    res = CompareResult(a.label, b.label, len(data), next(iter(data[0].values())).shape[0], where, ra.provider,
                        only_a=[n for n in a.blobs if n not in b.blobs] if a.net is not None and not blobs else [],
                        only_b=[n for n in b.blobs if n not in a.blobs] if b.net is not None and not blobs else [])
    for n in common:
        xa, xb = ra.outputs[a.blobs[n]], rb.outputs[b.blobs[n]]
        if [x.shape for x in xa] != [x.shape for x in xb]:
            res.only_a.append(f"{n} (shape {list(xa[0].shape)} vs {list(xb[0].shape)})")
            continue
        res.rows.append(BlobDiff(n, list(xa[0].shape), diff(xa, xb)))
    return res
