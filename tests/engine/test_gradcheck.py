"""Gradient check of every layer type with a backward, through the ONNX backward (Caffe's GradientChecker)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.engine.gradcheck import check_layer_gradient, distinct_values
from tests.layers.util import build_net


def _feeds(net, labels: dict[str, np.ndarray] | None = None, seed: int = 0):
    rng = np.random.default_rng(seed)
    feeds = {}
    data = [(t, s) for layer in net.layers if layer.impl.is_data for t, s in zip(layer.tops, layer.top_shapes, strict=True)]
    pool = distinct_values((sum(int(np.prod(s)) for _, s in data),), rng)  # no ties across bottoms either
    at = 0
    for t, s in data:
        n = int(np.prod(s))
        feeds[t] = pool[at:at + n].reshape(s)
        at += n
    for layer in net.layers:
        for p in layer.params:
            name = f"{p.shared_from or layer.name}::{p.share_name or p.blob.role}"
            if p.blob.role == "variance":
                feeds[name] = rng.uniform(0.5, 1.5, p.shape).astype(np.float32)
            elif p.blob.role == "scale_factor":
                feeds[name] = np.ones(p.shape, np.float32)
            else:
                feeds[name] = rng.uniform(-1, 1, p.shape).astype(np.float32)
    feeds.update(labels or {})
    return feeds


L = 'layer {{ name: "l" type: "{t}" bottom: "b0" top: "y" {p} }}'
CONV = 'convolution_param {{ num_output: {n} kernel_size: {k} stride: {s} pad: {p} {extra} }}'

CASES = [
    ("conv", L.format(t="Convolution", p=CONV.format(n=3, k=3, s=1, p=1, extra="")), [(2, 2, 5, 5)]),
    ("conv_stride_odd", L.format(t="Convolution", p=CONV.format(n=2, k=3, s=2, p=0, extra="")), [(1, 3, 7, 6)]),
    ("conv_group_dil", L.format(t="Convolution", p=CONV.format(n=4, k=2, s=1, p=1, extra="group: 2 dilation: 2")),
     [(2, 4, 6, 5)]),
    ("conv_hw", L.format(t="Convolution", p='convolution_param { num_output: 2 kernel_h: 3 kernel_w: 1 stride_h: 2 '
                                           'stride_w: 1 pad_h: 0 pad_w: 1 bias_term: false }'), [(1, 2, 7, 4)]),
    ("conv_1x1_wide", L.format(t="Convolution", p=CONV.format(n=5, k=1, s=1, p=0, extra="")), [(2, 2, 3, 3)]),
    # 16 outputs: onnxruntime's NCHWc kernels run the blocked weight gradient (block 8 or 16)
    ("conv_16_out", L.format(t="Convolution", p=CONV.format(n=16, k=3, s=2, p=1, extra="")), [(3, 2, 5, 6)]),
    ("conv_dil_rect", L.format(t="Convolution", p='convolution_param { num_output: 3 kernel_h: 3 kernel_w: 2 pad_h: 2 '
                                                 'pad_w: 1 dilation: 2 }'), [(2, 2, 6, 5)]),
    ("depthwise", L.format(t="ConvolutionDepthwise", p=CONV.format(n=3, k=3, s=2, p=1, extra="")), [(1, 3, 6, 6)]),
    ("deconv", L.format(t="Deconvolution", p=CONV.format(n=2, k=3, s=2, p=1, extra="")), [(1, 3, 4, 3)]),
    ("deconv_group", L.format(t="Deconvolution", p=CONV.format(n=4, k=2, s=2, p=0, extra="group: 2")), [(1, 2, 3, 3)]),
    ("deconv_s1", L.format(t="Deconvolution", p=CONV.format(n=2, k=3, s=1, p=1, extra="")), [(2, 3, 4, 5)]),
    ("ip", L.format(t="InnerProduct", p="inner_product_param { num_output: 3 }"), [(2, 2, 3, 2)]),
    ("ip_axis2_T", L.format(t="InnerProduct", p="inner_product_param { num_output: 3 axis: 2 transpose: true }"),
     [(2, 2, 3, 2)]),
    ("maxpool_ceil", L.format(t="Pooling", p="pooling_param { pool: MAX kernel_size: 3 stride: 2 }"), [(1, 2, 6, 7)]),
    ("maxpool_pad", L.format(t="Pooling", p="pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 }"),
     [(1, 2, 5, 5)]),
    ("maxpool_stride_gt_kernel", L.format(t="Pooling", p="pooling_param { pool: MAX kernel_size: 1 stride: 2 }"),
     [(1, 2, 5, 5)]),
    ("avepool_ceil", L.format(t="Pooling", p="pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }"),
     [(1, 2, 6, 7)]),
    ("avepool_stride_gt_kernel", L.format(t="Pooling", p="pooling_param { pool: AVE kernel_size: 2 stride: 3 }"),
     [(1, 2, 8, 7)]),
    ("avepool_global", L.format(t="Pooling", p="pooling_param { pool: AVE global_pooling: true }"), [(2, 3, 4, 3)]),
    ("maxpool_global", L.format(t="Pooling", p="pooling_param { pool: MAX global_pooling: true }"), [(2, 3, 4, 3)]),
    ("lrn_across", L.format(t="LRN", p="lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 k: 2 }"), [(1, 5, 3, 3)]),
    ("lrn_within", L.format(t="LRN", p="lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL }"),
     [(1, 2, 5, 4)]),
    ("batchnorm_train", L.format(t="BatchNorm", p=""), [(3, 2, 3, 3)]),
    ("batchnorm_global", L.format(t="BatchNorm", p="batch_norm_param { use_global_stats: true }"), [(2, 3, 2, 2)]),
    ("scale_bias", L.format(t="Scale", p="scale_param { bias_term: true }"), [(2, 3, 2, 2)]),
    ("scale_axes", L.format(t="Scale", p="scale_param { axis: 1 num_axes: 2 }"), [(2, 3, 2, 2)]),
    ("bias", L.format(t="Bias", p=""), [(2, 3, 2, 2)]),
    ("relu", L.format(t="ReLU", p=""), [(2, 3, 2, 2)]),
    ("leaky", L.format(t="ReLU", p="relu_param { negative_slope: 0.1 }"), [(2, 3, 2, 2)]),
    ("prelu", L.format(t="PReLU", p=""), [(2, 3, 2, 2)]),
    ("prelu_shared", L.format(t="PReLU", p="prelu_param { channel_shared: true }"), [(2, 3, 2)]),
    ("elu", L.format(t="ELU", p="elu_param { alpha: 0.5 }"), [(2, 3, 2, 2)]),
    ("sigmoid", L.format(t="Sigmoid", p=""), [(2, 3, 2, 2)]),
    ("tanh", L.format(t="TanH", p=""), [(2, 3, 2, 2)]),
    ("absval", L.format(t="AbsVal", p=""), [(2, 3, 2, 2)]),
    ("bnll", L.format(t="BNLL", p=""), [(2, 3, 2, 2)]),
    ("power", L.format(t="Power", p="power_param { power: 2 scale: 0.5 shift: 3 }"), [(2, 3, 2, 2)]),
    ("exp", L.format(t="Exp", p="exp_param { base: 2 scale: 0.5 shift: 0.1 }"), [(2, 3, 2, 2)]),
    ("log", L.format(t="Log", p="log_param { scale: 0.5 shift: 2 }"), [(2, 3, 2, 2)]),
    ("softmax", L.format(t="Softmax", p=""), [(2, 4, 2, 2)]),
    ("softmax_axis", L.format(t="Softmax", p="softmax_param { axis: 2 }"), [(2, 3, 4)]),
    ("flatten", L.format(t="Flatten", p=""), [(2, 3, 2, 2)]),
    ("reshape", L.format(t="Reshape", p="reshape_param { shape { dim: 0 dim: -1 dim: 2 } }"), [(2, 3, 2, 2)]),
    ("permute", L.format(t="Permute", p="permute_param { order: 0 order: 2 order: 3 order: 1 }"), [(2, 3, 2, 2)]),
    ("tile", L.format(t="Tile", p="tile_param { axis: 1 tiles: 2 }"), [(2, 3, 2)]),
    ("reduction", L.format(t="Reduction", p="reduction_param { operation: SUMSQ axis: 1 coeff: 0.5 }"), [(2, 3, 2)]),
    ("mvn", L.format(t="MVN", p=""), [(2, 3, 3, 3)]),
    ("normalize", L.format(t="Normalize", p="norm_param { across_spatial: false channel_shared: false }"),
     [(2, 3, 2, 2)]),
    ("slice", 'layer { name: "l" type: "Slice" bottom: "b0" top: "y1" top: "y2" slice_param { slice_point: 1 } }',
     [(2, 3, 2)]),
    ("split", 'layer { name: "l" type: "Split" bottom: "b0" top: "y1" top: "y2" }', [(2, 3)]),
    ("concat", 'layer { name: "l" type: "Concat" bottom: "b0" bottom: "b1" top: "y" }', [(2, 3, 2), (2, 1, 2)]),
    ("crop", 'layer { name: "l" type: "Crop" bottom: "b0" bottom: "b1" top: "y" crop_param { offset: 1 } }',
     [(1, 2, 5, 5), (1, 2, 3, 2)]),
    ("eltwise_sum", 'layer { name: "l" type: "Eltwise" bottom: "b0" bottom: "b1" top: "y" '
                    'eltwise_param { coeff: 2 coeff: -1 } }', [(2, 3), (2, 3)]),
    ("eltwise_prod", 'layer { name: "l" type: "Eltwise" bottom: "b0" bottom: "b1" top: "y" '
                     'eltwise_param { operation: PROD } }', [(2, 3), (2, 3)]),
    ("eltwise_max", 'layer { name: "l" type: "Eltwise" bottom: "b0" bottom: "b1" bottom: "b2" top: "y" '
                    'eltwise_param { operation: MAX } }', [(2, 3), (2, 3), (2, 3)]),
    ("scale_2nd_bottom", 'layer { name: "l" type: "Scale" bottom: "b0" bottom: "b1" top: "y" }', [(2, 3, 2), (3,)]),
    ("euclidean", 'layer { name: "l" type: "EuclideanLoss" bottom: "b0" bottom: "b1" top: "y" }', [(3, 4), (3, 4)]),
]


@pytest.mark.parametrize("name,text,shapes", CASES, ids=[c[0] for c in CASES])
def test_layer_gradient(name, text, shapes):
    net = build_net(text, shapes, phase="train")
    check_layer_gradient(net, _feeds(net))


LOSSES = [
    ("softmax_loss", 'layer { name: "l" type: "SoftmaxWithLoss" bottom: "b0" bottom: "b1" top: "y" }',
     [(4, 3), (4,)], {"b1": np.array([0, 2, 1, 2], np.float32)}),
    ("softmax_loss_spatial_ignore",
     'layer { name: "l" type: "SoftmaxWithLoss" bottom: "b0" bottom: "b1" top: "y" '
     'loss_param { ignore_label: 1 normalization: VALID } }',
     [(2, 3, 2, 2), (2, 1, 2, 2)], {"b1": np.array([0, 1, 2, 1, 2, 0, 1, 1], np.float32).reshape(2, 1, 2, 2)}),
    ("sigmoid_ce", 'layer { name: "l" type: "SigmoidCrossEntropyLoss" bottom: "b0" bottom: "b1" top: "y" }',
     [(2, 3), (2, 3)], {"b1": np.array([[0, 1, 1], [1, 0, 0]], np.float32)}),
    ("contrastive", 'layer { name: "l" type: "ContrastiveLoss" bottom: "b0" bottom: "b1" bottom: "b2" top: "y" '
                    'contrastive_loss_param { margin: 2 } }', [(3, 2), (3, 2), (3,)],
     {"b2": np.array([1, 0, 0], np.float32)}),
    ("hinge", 'layer { name: "l" type: "HingeLoss" bottom: "b0" bottom: "b1" top: "y" }',
     [(3, 4), (3,)], {"b1": np.array([0, 3, 1], np.float32)}),
    ("hinge_l2", 'layer { name: "l" type: "HingeLoss" bottom: "b0" bottom: "b1" top: "y" hinge_loss_param { norm: L2 } }',
     [(3, 4), (3,)], {"b1": np.array([0, 3, 1], np.float32)}),
]


@pytest.mark.parametrize("name,text,shapes,labels", LOSSES, ids=[c[0] for c in LOSSES])
def test_loss_gradient(name, text, shapes, labels):
    net = build_net(text, shapes, phase="train")
    check_layer_gradient(net, _feeds(net, labels), skip=tuple(labels))


def test_dropout_backward_uses_the_forward_mask():
    """Dropout in training: dL/dx = R * mask / (1 - ratio), with the mask the forward drew."""
    import onnxruntime as ort
    from onnx import helper

    from tests.engine.gradcheck import build_check_model

    net = build_net('layer { name: "d" type: "Dropout" bottom: "b0" top: "y" dropout_param { dropout_ratio: 0.4 } }',
                    [(4, 50)], phase="train")
    model, _, _, _ = build_check_model(net)
    model.graph.output.append(helper.make_tensor_value_info("y", 1, [4, 50]))
    r = next(i for i in model.graph.initializer if i.name == "R::y")
    from onnx import numpy_helper

    rr = numpy_helper.to_array(r)
    x = np.random.default_rng(0).uniform(0.5, 1.5, (4, 50)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y, dx = sess.run(["y", "grad::b0"], {"b0": x})
    mask = y != 0
    assert 0 < mask.mean() < 1  # some units dropped, some kept
    np.testing.assert_allclose(y[mask], x[mask] / 0.6, rtol=1e-6)
    np.testing.assert_allclose(dx, rr * mask / 0.6, rtol=1e-6)


@pytest.mark.parametrize("form", ["im2col", "transposed", "blocked", "split", "split_chunked"])
@pytest.mark.parametrize("name", ["conv", "conv_stride_odd", "conv_group_dil", "conv_hw", "conv_1x1_wide", "conv_dil_rect",
                                  "conv_16_out", "depthwise", "deconv_group", "deconv_s1"])
def test_conv_weight_gradient_formulations(name, form, monkeypatch):
    """Each formulation of a convolution's weight gradient, forced (split only where it applies:
    stride 1, one group; the others fall back to im2col), split also in batch chunks; blocked
    pads the batch to the NCHWc block (plain Conv where the channels do not fit the block)."""
    from dnntool.onnxgraph import grad_spatial

    monkeypatch.setattr(grad_spatial, "DW_FORM", form.removesuffix("_chunked"))
    if form.endswith("_chunked"):  # one batch chunk per image
        monkeypatch.setattr(grad_spatial, "SPLIT_CHUNK", 1)
    _, text, shapes = next(c for c in CASES if c[0] == name)
    net = build_net(text, shapes, phase="train")
    check_layer_gradient(net, _feeds(net))


@pytest.mark.parametrize("form", ["flipped", "transpose"])
@pytest.mark.parametrize("name", ["conv", "conv_stride_odd", "conv_group_dil", "conv_hw", "conv_dil_rect", "depthwise"])
def test_conv_data_gradient_formulations(name, form, monkeypatch):
    """Both formulations of a convolution's data gradient (flipped-weight Conv, ConvTranspose), forced."""
    from dnntool.onnxgraph import grad_spatial

    monkeypatch.setattr(grad_spatial, "DX_FORM", form)
    _, text, shapes = next(c for c in CASES if c[0] == name)
    net = build_net(text, shapes, phase="train")
    check_layer_gradient(net, _feeds(net))
