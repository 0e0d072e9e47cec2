"""Upgrade old Caffe nets and solvers to the current form, as Caffe's upgrade_proto.cpp does.

Handled: V1 ``layers {}`` (enum types, ``blobs_lr``/``weight_decay``, ``param`` names, data-layer
transform fields), legacy deploy headers (``input:`` with ``input_dim:`` or ``input_shape``) turned
into an ``Input`` layer, old three-``param`` BatchNorm layers, and the solver's ``solver_type`` enum.
"""

from __future__ import annotations

from dnntool.errors import FormatError, SourceLoc
from dnntool.proto import caffe_pb2

V1 = caffe_pb2.V1LayerParameter

# Caffe's UpgradeV1LayerType, as a table.
V1_TYPE_NAMES: dict[int, str] = {
    V1.ABSVAL: "AbsVal", V1.ACCURACY: "Accuracy", V1.ARGMAX: "ArgMax", V1.BNLL: "BNLL",
    V1.CONCAT: "Concat", V1.CONTRASTIVE_LOSS: "ContrastiveLoss", V1.CONVOLUTION: "Convolution",
    V1.CROP: "Crop", V1.DECONVOLUTION: "Deconvolution", V1.DATA: "Data", V1.DROPOUT: "Dropout",
    V1.DUMMY_DATA: "DummyData", V1.EUCLIDEAN_LOSS: "EuclideanLoss", V1.ELTWISE: "Eltwise",
    V1.EXP: "Exp", V1.FLATTEN: "Flatten", V1.HDF5_DATA: "HDF5Data", V1.HDF5_OUTPUT: "HDF5Output",
    V1.HINGE_LOSS: "HingeLoss", V1.IM2COL: "Im2col", V1.IMAGE_DATA: "ImageData",
    V1.INFOGAIN_LOSS: "InfogainLoss", V1.INNER_PRODUCT: "InnerProduct", V1.LRN: "LRN",
    V1.MEMORY_DATA: "MemoryData", V1.MULTINOMIAL_LOGISTIC_LOSS: "MultinomialLogisticLoss",
    V1.MVN: "MVN", V1.POOLING: "Pooling", V1.POWER: "Power", V1.RELU: "ReLU",
    V1.SIGMOID: "Sigmoid", V1.SIGMOID_CROSS_ENTROPY_LOSS: "SigmoidCrossEntropyLoss",
    V1.SILENCE: "Silence", V1.SOFTMAX: "Softmax", V1.SOFTMAX_LOSS: "SoftmaxWithLoss",
    V1.SPLIT: "Split", V1.SLICE: "Slice", V1.TANH: "TanH", V1.WINDOW_DATA: "WindowData",
    V1.THRESHOLD: "Threshold",
}

_SOLVER_TYPES = {
    caffe_pb2.SolverParameter.SGD: "SGD",
    caffe_pb2.SolverParameter.NESTEROV: "Nesterov",
    caffe_pb2.SolverParameter.ADAGRAD: "AdaGrad",
    caffe_pb2.SolverParameter.RMSPROP: "RMSProp",
    caffe_pb2.SolverParameter.ADADELTA: "AdaDelta",
    caffe_pb2.SolverParameter.ADAM: "Adam",
}

_LAYER_FIELDS = {f.name for f in caffe_pb2.LayerParameter.DESCRIPTOR.fields}
_DATA_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")
_DATA_PARAM_OF = {"Data": "data_param", "ImageData": "image_data_param",
                  "WindowData": "window_data_param"}


def upgrade_v1_layer(v1: caffe_pb2.V1LayerParameter, index: int) -> caffe_pb2.LayerParameter:
    """Convert one V1 ``layers {}`` entry to a current ``layer {}``."""
    if v1.HasField("layer"):
        raise FormatError(
            f"layer #{index} uses the V0 format (layers {{ layer {{ ... }} }}), which is not supported;"
            " upgrade it with Caffe's upgrade_net_proto_text first"
        )
    out = caffe_pb2.LayerParameter()
    out.name = v1.name
    out.bottom.extend(v1.bottom)
    out.top.extend(v1.top)
    out.include.extend(v1.include)
    out.exclude.extend(v1.exclude)
    if v1.HasField("type"):
        if v1.type not in V1_TYPE_NAMES:
            raise FormatError(f"layer '{v1.name}': V1 layer type {v1.type} has no current equivalent")
        out.type = V1_TYPE_NAMES[v1.type]
    out.blobs.extend(v1.blobs)
    n_specs = max(len(v1.param), len(v1.blob_share_mode), len(v1.blobs_lr), len(v1.weight_decay))
    for i in range(n_specs):
        spec = out.param.add()
        if i < len(v1.param):
            spec.name = v1.param[i]
        if i < len(v1.blob_share_mode):
            spec.share_mode = v1.blob_share_mode[i]
        if i < len(v1.blobs_lr):
            spec.lr_mult = v1.blobs_lr[i]
        if i < len(v1.weight_decay):
            spec.decay_mult = v1.weight_decay[i]
    out.loss_weight.extend(v1.loss_weight)
    for field, value in v1.ListFields():
        if field.name.endswith("_param") and field.name in _LAYER_FIELDS:
            getattr(out, field.name).CopyFrom(value)
    return out


def _upgrade_data_transform(layer: caffe_pb2.LayerParameter) -> None:
    """Move the pre-2014 transform fields of data layers into ``transform_param``."""
    pname = _DATA_PARAM_OF.get(layer.type)
    if pname is None or not layer.HasField(pname):
        return
    p = getattr(layer, pname)
    for f in _DATA_TRANSFORM_FIELDS:
        if p.DESCRIPTOR.fields_by_name.get(f) is not None and p.HasField(f):
            setattr(layer.transform_param, f, getattr(p, f))
            p.ClearField(f)


def _upgrade_input(net: caffe_pb2.NetParameter) -> list[str]:
    """Turn legacy ``input``/``input_dim``/``input_shape`` fields into a leading Input layer."""
    if not net.input:
        if net.input_dim or net.input_shape:
            raise FormatError("input_dim/input_shape given without any 'input:' name")
        return []
    n = len(net.input)
    shapes: list[list[int]] = []
    if net.input_shape:
        if len(net.input_shape) != n:
            raise FormatError(f"{n} 'input:' names but {len(net.input_shape)} input_shape blocks")
        shapes = [list(s.dim) for s in net.input_shape]
    elif net.input_dim:
        if len(net.input_dim) != 4 * n:
            raise FormatError(
                f"{n} 'input:' names need {4 * n} input_dim values, found {len(net.input_dim)}"
            )
        shapes = [list(net.input_dim[4 * i: 4 * i + 4]) for i in range(n)]
    layer = caffe_pb2.LayerParameter(name="input", type="Input")
    layer.top.extend(net.input)
    for dims in shapes:
        layer.input_param.shape.add().dim.extend(dims)
    layers = [layer, *net.layer]
    del net.layer[:]
    net.layer.extend(layers)
    net.ClearField("input")
    net.ClearField("input_dim")
    net.ClearField("input_shape")
    return ["legacy input fields converted to an Input layer"]


def upgrade_net(
    net: caffe_pb2.NetParameter, order: list[str] | None = None
) -> tuple[caffe_pb2.NetParameter, list[str]]:
    """Upgrade ``net`` in place and return it with notes on what was changed.

    ``order`` lists the top-level block keywords ("layer"/"layers") in file order; with it a
    file mixing both styles keeps its layer order (Caffe refuses such files; netscope accepts them).
    """
    notes: list[str] = []
    if net.layers:
        v1 = [upgrade_v1_layer(v, i) for i, v in enumerate(net.layers)]
        v2 = list(net.layer)
        if v2:
            notes.append("file mixes V1 'layers {}' and 'layer {}' blocks; merged in file order")
            if order and order.count("layers") == len(v1) and order.count("layer") == len(v2):
                it1, it2 = iter(v1), iter(v2)
                merged = [next(it1) if k == "layers" else next(it2) for k in order]
            else:
                merged = v2 + v1
        else:
            merged = v1
            notes.append("V1 'layers {}' upgraded")
        net.ClearField("layers")
        del net.layer[:]
        net.layer.extend(merged)
    notes += _upgrade_input(net)
    for layer in net.layer:
        _upgrade_data_transform(layer)
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            for spec in layer.param:  # old BatchNorm nets froze their statistics by hand
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0
    return net, notes


def upgrade_solver(solver: caffe_pb2.SolverParameter, path: str | None = None) -> caffe_pb2.SolverParameter:
    """Replace the deprecated ``solver_type`` enum by the ``type`` string; upgrade inline nets."""
    if solver.HasField("solver_type"):
        name = _SOLVER_TYPES[solver.solver_type]
        if solver.HasField("type") and solver.type != name:
            raise FormatError(
                f"solver_type {name} conflicts with type \"{solver.type}\"", SourceLoc(path)
            )
        solver.type = name
        solver.ClearField("solver_type")
    for field in ("net_param", "train_net_param"):
        if solver.HasField(field):
            upgrade_net(getattr(solver, field))
    for test_net in solver.test_net_param:
        upgrade_net(test_net)
    return solver
