"""The translator's contract: valid ONNX for every zoo deploy net, ONNX Runtime accepts it, Caffe
blob names as tensor names, ``outputs="all"``, a dynamic batch, one-line errors for untranslatable
layers, byte-identical output; plus Caffe semantics OpenCV cannot check (InnerProduct transpose,
dilated grouped Deconvolution, Bias), against numpy."""

from __future__ import annotations

import glob

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from dnntool.errors import DnnToolError, NetError
from dnntool.io.caffemodel import Weights
from dnntool.net import Net
from dnntool.net.weights import layer_arrays
from dnntool.onnxgraph.builder import IR_VERSION, OPSET
from dnntool.translate.forward import to_onnx
from tests.engine.oracle import random_weights, run_ours
from tests.engine.test_opencv_nets import CIFAR10_QUICK, SSD_HEAD, WRITTEN, _text_net
from tests.layers.util import build_net
from tests.zoo import zoo_dir

ZOO = zoo_dir()
DEPLOY = sorted(glob.glob(str(ZOO / "**" / "*deploy*.prototxt"), recursive=True)) if ZOO else []
UNBUILDABLE = {"MobileNetSSD_deploy_template.prototxt"}  # a template with placeholders, not a net


def translatable_tops(net: Net) -> list[str]:
    """SSA ids of every layer output that needs no untranslatable layer upstream."""
    bad: set[str] = set()
    for layer in net.layers:
        if not layer.impl.is_data and (not layer.impl.translatable or any(b in bad for b in layer.bottoms)):
            bad.update(layer.tops)
    return [t for layer in net.layers if not layer.impl.is_data for t in layer.tops if t not in bad]


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _weights(net: Net):
    return layer_arrays(net, Weights(blobs={k: list(v) for k, v in random_weights(net).items()}))


@pytest.mark.skipif(not DEPLOY, reason="the zoo (../shared/zoo) is absent")
def test_checker_passes_on_every_zoo_deploy_net():
    checked = 0
    for path in DEPLOY:
        if path.rsplit("/", 1)[-1] in UNBUILDABLE:
            continue
        net = Net.from_prototxt(path)
        outs = translatable_tops(net)
        tr = to_onnx(net, outputs=[net.blobs[t].name for t in outs if net.latest[net.blobs[t].name] == t],
                     params_as_inputs=True)
        onnx.checker.check_model(tr.model, full_check=True)
        assert tr.model.ir_version == IR_VERSION and tr.model.opset_import[0].version == OPSET, path
        checked += 1
    assert checked >= 80


def test_ir_version_is_accepted_by_onnxruntime():
    net = _text_net(CIFAR10_QUICK)
    tr = to_onnx(net, _weights(net))
    assert (tr.model.ir_version, tr.model.opset_import[0].domain, tr.model.opset_import[0].version) == (8, "", 17)
    sess = _session(tr.model)
    (prob,) = sess.run(None, {"data": np.zeros((1, 3, 32, 32), np.float32)})
    assert prob.shape == (1, 10) and abs(float(prob.sum()) - 1) < 1e-5


def test_blob_names_are_tensor_names():
    net = _text_net(CIFAR10_QUICK)
    tr = to_onnx(net, _weights(net), outputs=["ip1", "prob"])
    graph = tr.model.graph
    assert [i.name for i in graph.input] == ["data"]
    assert [o.name for o in graph.output] == ["ip1", "prob"]
    assert tr.output_blobs == {"ip1": "ip1", "prob": "prob"}
    produced = {o for node in graph.node for o in node.output}
    assert {"conv1", "pool1", "conv3", "ip2"} <= produced  # every Caffe blob keeps its name
    # an in-place chain: the value ReLU wrote is 'pool1@relu1', the convolution's is 'conv2'
    assert "pool1@relu1" in produced


def test_outputs_all_lists_every_layer_top():
    net = _text_net(SSD_HEAD)
    tr = to_onnx(net, _weights(net), outputs="all")
    want = [t for layer in net.layers if not layer.impl.is_data and layer.impl.translatable for t in layer.tops]
    assert tr.outputs == want and "detection_out" not in tr.outputs
    assert [o.name for o in tr.model.graph.output] == want
    results = _session(tr.model).run(None, {"data": np.ones((1, 3, 64, 64), np.float32)})
    assert len(results) == len(want)


@pytest.mark.parametrize("name", ["cifar10_quick", "ssd_head", "fcn_deconv_crop", "resnet_bottleneck"])
def test_dynamic_batch_runs_with_batch_1_and_3(name):
    """One dynamic-batch model equals the net built statically at batch 1 and at batch 3."""
    from dnntool.io.prototxt import parse_net_text

    net = _text_net(WRITTEN[name])
    arrays = _weights(net)
    dyn_tr = to_onnx(net, arrays, outputs="all", dynamic_batch=True)
    assert dyn_tr.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    dynamic = _session(dyn_tr.model)
    shape = net.layers[0].top_shapes[0]
    x = np.random.default_rng(0).standard_normal((3, *shape[1:])).astype(np.float32)
    for n in (1, 3):
        src = parse_net_text(WRITTEN[name], "case.prototxt")
        fixed = Net.from_param(src.param, "test", input_shapes={"data": (n, *shape[1:])})
        want = _session(to_onnx(fixed, arrays, outputs="all").model).run(None, {"data": x[:n]})
        got = dynamic.run(None, {"data": x[:n]})
        for out, ref, blob in zip(got, want, dyn_tr.outputs, strict=True):
            np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6, err_msg=f"{name} {blob} batch {n}")


DYN = 'layer {{ name: "l" type: "{}" bottom: "b0" {} top: "y" {} }}'
DYN_CASES = [  # id, layer text, shapes at batch 2 (the labels bottom b1 gets class indices)
    ("softmax_loss", DYN.format("SoftmaxWithLoss", 'bottom: "b1"', ""), [(2, 3, 2, 2), (2, 1, 2, 2)]),
    ("softmax_loss_batch", DYN.format("SoftmaxWithLoss", 'bottom: "b1"', "loss_param { normalization: BATCH_SIZE }"),
     [(2, 3), (2,)]),
    ("euclidean", DYN.format("EuclideanLoss", 'bottom: "b1"', ""), [(2, 3), (2, 3)]),
    ("sigmoid_ce", DYN.format("SigmoidCrossEntropyLoss", 'bottom: "b1"', ""), [(2, 3), (2, 3)]),
    ("contrastive", DYN.format("ContrastiveLoss", 'bottom: "b1" bottom: "b2"', ""), [(2, 3), (2, 3), (2,)]),
    ("hinge", DYN.format("HingeLoss", 'bottom: "b1"', ""), [(2, 3), (2,)]),
    ("multinomial", DYN.format("MultinomialLogisticLoss", 'bottom: "b1"', ""), [(2, 3), (2,)]),
    ("accuracy", DYN.format("Accuracy", 'bottom: "b1"', "accuracy_param { top_k: 2 }"), [(2, 3), (2,)]),
    ("infogain", DYN.format("InfogainLoss", 'bottom: "b1"', 'infogain_loss_param { source: "H" }'), [(2, 3), (2,)]),
    ("smooth_l1", DYN.format("SmoothL1Loss", 'bottom: "b1"', ""), [(2, 8), (2, 8)]),
    ("softmax_ohem", DYN.format("SoftmaxWithLossOHEM", 'bottom: "b1"', 'top: "p" top: "n"'), [(2, 3, 2), (2, 2)]),
    ("ip_axis2", DYN.format("InnerProduct", "", "inner_product_param { num_output: 3 axis: 2 }"), [(2, 3, 4)]),
    ("argmax", DYN.format("ArgMax", "", "argmax_param { top_k: 2 out_max_val: true }"), [(2, 3, 4)]),
    ("scale_axis0", DYN.format("Scale", 'bottom: "b1"', "scale_param { axis: 0 }"), [(2, 3, 2), (2, 3)]),
]


@pytest.mark.parametrize(("text", "shapes"), [c[1:] for c in DYN_CASES], ids=[c[0] for c in DYN_CASES])
def test_dynamic_batch_layers_follow_the_runtime_batch(text, shapes, tmp_path, monkeypatch):
    """Normalisers and reshapes read the batch at run time: batch 5 through a model built at 2."""
    from dnntool.io.blob import write_binaryproto

    monkeypatch.chdir(tmp_path)
    write_binaryproto("H", np.abs(np.random.default_rng(0).standard_normal((1, 1, 3, 3))).astype(np.float32))
    net = build_net(text, shapes)
    arrays = _weights(net)
    dyn = _session(to_onnx(net, arrays, outputs="all", dynamic_batch=True).model)
    big = build_net(text, [(5, *s[1:]) for s in shapes])
    rng = np.random.default_rng(1)
    labels = "Accuracy" in text or ("Loss" in text and "Euclidean" not in text)
    feeds = {f"b{i}": (rng.integers(0, 2, (5, *s[1:])) if i == 1 and labels
                       else rng.standard_normal((5, *s[1:]))).astype(np.float32) for i, s in enumerate(shapes)}
    want = _session(to_onnx(big, arrays, outputs="all").model).run(None, feeds)
    for got, ref in zip(dyn.run(None, feeds), want, strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


UNTRANSLATABLE = '''
layer { name: "data" type: "Input" top: "data" top: "im_info" input_param { shape { dim: 1 dim: 18 dim: 4 dim: 4 }
  shape { dim: 1 dim: 3 } } }
layer { name: "deltas" type: "Convolution" bottom: "data" top: "deltas" convolution_param { num_output: 36 kernel_size: 1 } }
layer { name: "proposal" type: "Python" bottom: "data" bottom: "deltas" bottom: "im_info" top: "rois"
  python_param { module: "rpn.proposal_layer" layer: "ProposalLayer" param_str: "'feat_stride': 16" } }
layer { name: "pool" type: "ROIPooling" bottom: "data" bottom: "rois" top: "pool"
  roi_pooling_param { pooled_h: 2 pooled_w: 2 spatial_scale: 0.0625 } }
'''


def test_untranslatable_layer_gives_one_line_error_naming_it():
    net = _text_net(UNTRANSLATABLE)
    with pytest.raises(NetError) as err:
        to_onnx(net, _weights(net), outputs=["pool"])
    msg = str(err.value)
    assert "'proposal' (Python)" in msg and "no ONNX translation" in msg and "\n" not in msg
    assert isinstance(err.value, DnnToolError)
    tr = to_onnx(net, _weights(net), outputs=["deltas"])  # outputs before it translate
    assert tr.outputs == ["deltas"]


def test_translating_twice_gives_identical_bytes():
    for name in ("ssd_head", "caffenet_groups_lrn", "fcn_deconv_crop"):
        net = _text_net(WRITTEN[name])
        arrays = _weights(net)
        a = to_onnx(net, arrays, outputs="all").model.SerializeToString()
        b = to_onnx(_text_net(WRITTEN[name]), arrays, outputs="all").model.SerializeToString()
        assert a == b, name


# -- Caffe semantics OpenCV does not implement ---------------------------------------------------

def _one_layer(text: str, shapes, arrays, feeds):
    net = build_net(text, shapes)
    return run_ours(net, arrays, feeds, ["y"])["y"]


@pytest.mark.parametrize(("axis", "transpose"), [(1, True), (2, True), (2, False), (0, False)])
def test_inner_product_axis_and_transpose(axis, transpose):
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 2)).astype(np.float32)
    m, k = int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:]))
    w = np.random.default_rng(2).standard_normal((k, 5) if transpose else (5, k)).astype(np.float32)
    b = np.arange(5, dtype=np.float32)
    text = ('layer { name: "l" type: "InnerProduct" bottom: "b0" top: "y" inner_product_param {'
            f' num_output: 5 axis: {axis} transpose: {str(transpose).lower()} }} }}')
    y = _one_layer(text, [x.shape], {"l": [w, b]}, {"b0": x})
    want = x.reshape(m, k) @ (w if transpose else w.T) + b
    np.testing.assert_allclose(y, want.reshape(*x.shape[:axis], 5), rtol=1e-5, atol=1e-5)


def _caffe_deconv(x, w, stride, pad, dil, group):
    """Caffe's deconvolution: each input value scatters W[c, o] over the (dilated) kernel taps."""
    n, c, h, wd = x.shape
    per_out, k = w.shape[1], w.shape[2]
    oh, ow = stride * (h - 1) + dil * (k - 1) + 1 - 2 * pad, stride * (wd - 1) + dil * (k - 1) + 1 - 2 * pad
    full = np.zeros((n, per_out * group, oh + 2 * pad, ow + 2 * pad))
    for ci in range(c):
        g = ci // (c // group)
        for i in range(k):
            for j in range(k):
                tap = x[:, ci, :, :, None] * w[ci, :, i, j]  # (n, h, w, per_out)
                full[:, g * per_out:(g + 1) * per_out, i * dil:i * dil + stride * h:stride,
                     j * dil:j * dil + stride * wd:stride] += tap.transpose(0, 3, 1, 2)
    return full[:, :, pad:pad + oh, pad:pad + ow]


@pytest.mark.parametrize(("stride", "pad", "dil", "group"), [(2, 1, 2, 2), (3, 0, 3, 4), (1, 2, 1, 1)])
def test_dilated_grouped_deconvolution(stride, pad, dil, group):
    x = np.random.default_rng(3).standard_normal((2, 4, 3, 5)).astype(np.float32)
    w = np.random.default_rng(4).standard_normal((4, 8 // group, 3, 3)).astype(np.float32)
    text = ('layer { name: "l" type: "Deconvolution" bottom: "b0" top: "y" convolution_param { num_output: 8'
            f' kernel_size: 3 stride: {stride} pad: {pad} dilation: {dil} group: {group} bias_term: false }} }}')
    y = _one_layer(text, [x.shape], {"l": [w]}, {"b0": x})
    np.testing.assert_allclose(y, _caffe_deconv(x, w, stride, pad, dil, group), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("param", "beta_shape"), [("", (3,)), ("axis: 0 num_axes: 2", (2, 3)),
                                                     ("axis: -1 num_axes: 1", (4,)), ("num_axes: 0", ())])
def test_bias_layer_axes(param, beta_shape):
    x = np.random.default_rng(5).standard_normal((2, 3, 4)).astype(np.float32)
    beta = np.random.default_rng(6).standard_normal(beta_shape).astype(np.float32)
    text = f'layer {{ name: "l" type: "Bias" bottom: "b0" top: "y" bias_param {{ {param} }} }}'
    y = _one_layer(text, [x.shape], {"l": [beta]}, {"b0": x})
    ax = {"": 1, "axis: 0 num_axes: 2": 0, "axis: -1 num_axes: 1": 2, "num_axes: 0": 3}[param]
    np.testing.assert_allclose(y, x + beta.reshape(beta_shape + (1,) * (x.ndim - ax - len(beta_shape))), rtol=1e-6)
