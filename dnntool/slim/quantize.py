"""FP16 and static int8 ONNX models of a Caffe net: the library half of ``dnntool quantize``.

Both start from the net's float ONNX translation (inputs and outputs as ``export-onnx`` writes them,
with the dnntool metadata, so ``dnntool test`` scores the result) after ONNX Runtime's basic graph
optimisation (``quant_pre_process``: constant folding, Conv + BatchNorm fusion), which also keeps
BatchNorm's raw statistic sums (blob / scale factor) out of float16's range.

* fp16: every float tensor and op becomes float16, except the loss and metric layers (labels and
  losses stay float32); inputs and outputs stay float32 with Cast nodes at the edges. On x86 CPUs
  ONNX Runtime has few float16 kernels: it casts around those ops and computes them in float32, so
  there the file halves, the weights are rounded to float16, and speed is about that of float.
* int8: ``onnxruntime.quantization.quantize_static`` in QDQ format (uint8 activations, int8
  weights, optionally per channel), calibrated on batches from an LMDB read through the net's TEST
  data layer (its transform_param) or ``--calib-db``; loss and metric layers are left in float.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dnntool.errors import DnnToolError, UsageError
from dnntool.net import Net

METHODS = ("minmax", "entropy", "percentile")
_FLOAT, _HALF = 1, 10
#: inputs that ONNX requires in float32 whatever the model's precision (op type -> input index)
_FLOAT32_INPUTS = {"Resize": {1, 2}, "Upsample": {1}}


def float_model(net: Net, weights):
    """The float32 ONNX model of ``net`` with export-onnx's metadata (an onnx.ModelProto)."""
    from dnntool.tools.export import translate

    return translate(net, weights).model


def preprocess(model):
    """ONNX Runtime's ``quant_pre_process`` (shape inference, basic optimisation) on a model."""
    import onnx
    from onnxruntime.quantization import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="dnntool-quant-") as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "pre.onnx"
        onnx.save(model, src)
        with _quiet():
            try:
                quant_pre_process(str(src), str(dst))
            except Exception:  # symbolic shape inference cannot type every op: skip that step
                quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        out = onnx.load(str(dst))
    _keep_metadata(model, out)
    return out


def _keep_metadata(src, dst) -> None:
    """``src``'s metadata (dnntool's output names and loss weights) on ``dst``, beside its own."""
    have = {p.key for p in src.metadata_props}
    props = [p for p in dst.metadata_props if p.key not in have]
    del dst.metadata_props[:]
    dst.metadata_props.extend([*src.metadata_props, *props])


@contextlib.contextmanager
def _quiet():
    """onnxruntime.quantization prints progress and logs warnings on the root logger: hold them."""
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


def metric_nodes(net: Net, model) -> set[str]:
    """Names of the nodes emitted by loss and metric layers (node names are ``<layer>/<op>``)."""
    keep = {layer.name for layer in net.layers if layer.impl.family == "loss"}
    return {n.name for n in model.graph.node if n.name.rsplit("/", 1)[0] in keep}


def to_fp16(model, keep: set[str] = frozenset()):
    """A float16 copy of ``model``: nodes not in ``keep`` compute in float16; float32 graph inputs
    and outputs with Cast nodes at the edges and wherever float16 and float32 nodes meet."""
    from onnx import helper, numpy_helper

    from dnntool.slim.compare import tensor_types

    types = tensor_types(model)
    m = type(model)()
    m.CopyFrom(model)
    g = m.graph
    consumers: dict[str, list] = defaultdict(list)
    for n in g.node:
        for i in n.input:
            consumers[i].append(n)
    half = {id(n) for n in g.node if n.name not in keep}
    dtype: dict[str, int] = {i.name: _FLOAT for i in g.input if i.type.tensor_type.elem_type == _FLOAT}
    for init in g.initializer:
        if init.data_type == _FLOAT:
            users = consumers.get(init.name, [])
            if users and all(id(u) in half and not _needs_float32(u, init.name) for u in users):
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
                dtype[init.name] = _HALF
            else:
                dtype[init.name] = _FLOAT
    nodes, casts = [], {}

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            casts[key] = f"{name}::to_{'fp16' if to == _HALF else 'fp32'}"
            nodes.append(helper.make_node("Cast", [name], [casts[key]], name=casts[key], to=to))
        return casts[key]

    for n in g.node:
        mode = _HALF if id(n) in half else _FLOAT
        for k, i in enumerate(n.input):
            if i in dtype:
                want = _FLOAT if k in _FLOAT32_INPUTS.get(n.op_type, ()) else mode
                if dtype[i] != want:
                    n.input[k] = cast(i, want)
        if mode == _HALF:
            _attrs_to_half(n)
        for o in n.output:
            if types.get(o) == _FLOAT or (mode == _HALF and types.get(o) == _HALF):
                dtype[o] = mode
        nodes.append(n)
    renamed = {o.name: o.name + "::fp16" for o in g.output if dtype.get(o.name) == _HALF}
    for n in nodes:
        for k, o in enumerate(n.output):
            if o in renamed:
                n.output[k] = renamed[o]
        for k, i in enumerate(n.input):
            if i in renamed:
                n.input[k] = renamed[i]
    nodes += [helper.make_node("Cast", [new], [old], name=f"{old}::to_fp32", to=_FLOAT) for old, new in renamed.items()]
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    return m


def _needs_float32(node, name: str) -> bool:
    return any(i == name and k in _FLOAT32_INPUTS.get(node.op_type, ()) for k, i in enumerate(node.input))


def _attrs_to_half(node) -> None:
    """Cast(to=float), Constant and ConstantOfShape values of a float16 node become float16."""
    from onnx import numpy_helper

    for a in node.attribute:
        if node.op_type == "Cast" and a.name == "to" and a.i == _FLOAT:
            a.i = _HALF
        elif node.op_type in ("Constant", "ConstantOfShape") and a.name == "value" and a.t.data_type == _FLOAT:
            a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16), a.t.name))


def quantize_int8(model, batches: Sequence[dict], keep: set[str] = frozenset(), per_channel: bool = False,
                  method: str = "minmax"):
    """Static QDQ int8 (uint8 activations, int8 weights) calibrated on ``batches``."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if method not in METHODS:
        raise UsageError(f"--calib-method must be one of {', '.join(METHODS)}, got '{method}'")
    names = {i.name for i in model.graph.input} - {i.name for i in model.graph.initializer}

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {k: v for k, v in b.items() if k in names}

    with tempfile.TemporaryDirectory(prefix="dnntool-quant-") as tmp:
        src, dst = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, src)
        with _quiet():
            quantize_static(
                str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method={"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                                  "percentile": CalibrationMethod.Percentile}[method],
                nodes_to_exclude=sorted(keep),
            )
        out = onnx.load(str(dst))
    _keep_metadata(model, out)
    return out


# -- the command ----------------------------------------------------------------------------------
def _abs_prototxt(net: Net, path: Path) -> str:
    """The net written to ``path`` with its data sources and mean files made absolute."""
    from dnntool.data.feeder import resolve_path, resolve_source
    from dnntool.io.prototxt import write_prototxt

    param = type(net.param_proto)()
    param.CopyFrom(net.param_proto)
    for lp in param.layer:
        if lp.data_param.source:  # one DB, a list or DB@K: each shard made absolute
            lp.data_param.source = ",".join(os.path.abspath(p) for p in resolve_source(lp.data_param.source,
                                                                                      net.source))
        if lp.transform_param.mean_file:
            lp.transform_param.mean_file = os.path.abspath(resolve_path(lp.transform_param.mean_file, net.source))
    write_prototxt(param, path)
    return str(path)


def side_by_side(net: Net, weights, onnx_path: str, test_db: str, iterations: int | None,
                 device: str = "auto") -> tuple[list[list], int]:
    """Float (the Caffe net) and quantized (the .onnx) scores on the same TEST batches of ``test_db``."""
    from dnntool.slim.batches import with_data_source
    from dnntool.slim.prune import default_iterations
    from dnntool.tools.evaluate import evaluate

    tnet = with_data_source(net, test_db)
    iterations = iterations or default_iterations(tnet)
    f = evaluate(tnet, weights, iterations, device)
    with tempfile.TemporaryDirectory(prefix="dnntool-quant-") as tmp:
        q = evaluate(onnx_path, None, iterations, device, data=_abs_prototxt(tnet, Path(tmp) / "data.prototxt"))
    qs = {s.name: s.values for s in q.scores}
    rows = [[s.name, s.values[0], qs[s.name][0], qs[s.name][0] - s.values[0]]
            for s in f.scores if s.name in qs and len(s.values) == 1]
    return rows, iterations * f.batch_size


def quantized_model(net: Net, weights, dtype: str, calib_db: str | None = None, calib_batches: int = 10,
                    calib_method: str = "minmax", per_channel: bool = False):
    """(the optimised float model, the fp16 or int8 model), both onnx.ModelProto."""
    from dnntool.slim.batches import db_batches, with_data_source

    fmodel = preprocess(float_model(net, weights))
    keep = metric_nodes(net, fmodel)
    if dtype == "fp16":
        return fmodel, to_fp16(fmodel, keep)
    if calib_batches <= 0:
        raise UsageError(f"--calib-batches must be positive, got {calib_batches}")
    cnet = with_data_source(net, calib_db) if calib_db is not None and _has_data_layer(net) else net
    try:
        calib = db_batches(cnet, calib_batches, calib_db if cnet is net else None)
    except UsageError as e:
        raise UsageError(f"int8 needs calibration data: {e.message} (--calib-db DB)") from None
    return fmodel, quantize_int8(fmodel, calib, keep, per_channel, calib_method)


def _measure(rep, net: Net, fmodel, qmodel, m, dtype: str) -> None:
    """Time both models on the batches of ``m`` and compare their outputs and score blobs."""
    from dnntool.slim.batches import run_models
    from dnntool.slim.compare import with_outputs
    from dnntool.slim.report import diff, feature_outputs

    made = {o for model in (fmodel, qmodel) for n in model.graph.node for o in n.output}
    names = [o.name for o in fmodel.graph.output] + [t for t in feature_outputs(net) if t in made]
    names = list(dict.fromkeys(names))
    rf, rq = run_models([with_outputs(fmodel, names), with_outputs(qmodel, names)], m.batches,
                        [names, names], m.device, m.repeat)
    rep.before.ms, rep.after.ms, rep.provider = rf.ms, rq.ms, rq.provider
    rep.batch, rep.batches, rep.data = next(iter(m.batches[0].values())).shape[0], len(m.batches), m.data
    rep.output_diff = {net.blobs[n].name if n in net.blobs else n: diff(rf.outputs[n], rq.outputs[n])
                       for n in names}
    bad = [k for k, d in rep.output_diff.items() if not np.isfinite(d.max_abs)]
    if bad:
        rep.notes.append(f"the {dtype} model gives non-finite values in {', '.join(bad)}"
                         + (": activations overflow float16 (above 65504); keep those layers in float32"
                            " or scale the input" if dtype == "fp16" else ""))
    if rq.ms > rf.ms:
        rep.notes.append(f"the {dtype} model is slower than float here ({rq.provider}): "
                         + ("ONNX Runtime's CPU kernels are mostly float32, so it casts around float16 ops"
                            if dtype == "fp16" else
                            "QDQ int8 pays off on CPUs with VNNI/dot-product instructions and bigger layers"))


def quantize_files(net_path, weights_path, out: str | os.PathLike[str], dtype: str = "int8",
                   calib_db: str | None = None, calib_batches: int = 10, calib_method: str = "minmax",
                   per_channel: bool = False, test_db: str | None = None, iterations: int | None = None,
                   input_shapes=None, batches: int = 3, db: str | None = None, device: str = "auto",
                   repeat: int = 3):
    """``dnntool quantize``: write an fp16 or int8 ``.onnx`` and report before/after (the float ONNX
    model is "before"), with float and quantized accuracy on ``test_db`` when given."""
    import onnx

    from dnntool.io.atomic import write_bytes
    from dnntool.io.caffemodel import load_weights
    from dnntool.slim.batches import load_test_net
    from dnntool.slim.report import SlimReport, measure_for, side_of

    if dtype not in ("fp16", "int8"):
        raise UsageError(f"--dtype must be fp16 or int8, got '{dtype}'")
    if dtype == "fp16" and (calib_db is not None or per_channel):
        raise UsageError("--calib-db and --per-channel are for --dtype int8")
    if not str(out).endswith(".onnx"):
        raise UsageError(f"-o '{out}': the output is an ONNX model; name it *.onnx")
    net = load_test_net(net_path, input_shapes, calib_db or test_db or db)
    weights = load_weights(weights_path)
    fmodel, qmodel = quantized_model(net, weights, dtype, calib_db, calib_batches, calib_method, per_channel)
    try:
        onnx.checker.check_model(qmodel)
    except onnx.checker.ValidationError as e:
        raise DnnToolError(f"the {dtype} model fails onnx.checker: {' '.join(str(e).split())[:300]}") from None
    data = qmodel.SerializeToString()
    write_bytes(out, data)
    before, after = side_of(net, weights, None), side_of(net, weights, None)
    before.bytes, after.bytes = len(fmodel.SerializeToString()), len(data)
    rep = SlimReport("quantize", net.name or Path(str(net_path)).stem, [str(out)], before, after)
    rep.extra.update(dtype=dtype, calib_method=calib_method if dtype == "int8" else None,
                     per_channel=per_channel, calib_batches=calib_batches if dtype == "int8" else 0)
    rep.notes.append("before is the float ONNX model (after the same graph optimisation); params and MACs"
                     f" are the same operations in {dtype}")
    m = measure_for(net, batches, db, device, repeat, real=True)
    if m.batches:
        _measure(rep, net, fmodel, qmodel, m, dtype)
    if test_db is not None:
        rows, images = side_by_side(net, weights, str(out), test_db, iterations, device)
        rep.columns, rep.rows = ["output", "float", dtype, "change"], rows
        rep.extra["test_images"] = images
        rep.notes.append(f"scored on {images} images of {Path(str(test_db)).name}; `dnntool test --model {out}"
                         f" --data NET` gives the {dtype} figures")
    return rep


def _has_data_layer(net: Net) -> bool:
    return any(layer.type == "Data" for layer in net.layers)
