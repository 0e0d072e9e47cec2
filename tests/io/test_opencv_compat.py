"""Files we write are read by OpenCV's Caffe importer, and OpenCV's Caffe test files are read by us.

The forward passes are checked against a small numpy interpreter of the same prototxt (Caffe
semantics: cross-correlation, grouped convolutions, ceil-mode pooling with clipped windows).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dnntool.cli import cli
from dnntool.io.caffemodel import load_weights, read_caffemodel, save_caffemodel
from dnntool.io.prototxt import parse_net_text, read_net, write_prototxt
from dnntool.net import Net
from dnntool.proto import caffe_pb2
from dnntool.tools.stats import check_weights
from tests.zoo import zoo_dir

cv2 = pytest.importorskip("cv2")
if not hasattr(getattr(cv2, "dnn", None), "readNetFromCaffe"):
    pytest.skip("cv2.dnn.readNetFromCaffe not available", allow_module_level=True)

ZOO = zoo_dir()
needs_zoo = pytest.mark.skipif(ZOO is None, reason="zoo corpus not available")
LAYERS = ZOO / "opencv_extra/testdata/dnn/layers" if ZOO is not None else None


# -- a numpy reference interpreter ---------------------------------------------------------------

def _pair(values, h, w, default):
    if h or w:
        return int(h), int(w)
    vals = list(values)
    if not vals:
        return default, default
    return int(vals[0]), int(vals[-1])


def np_conv(x, weight, bias, stride=(1, 1), pad=(0, 0), dilation=(1, 1), group=1):
    """Caffe Convolution (cross-correlation) by einsum over strided windows."""
    n, c, h, w = x.shape
    co, cg, kh, kw = weight.shape
    assert c == cg * group and co % group == 0
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    ekh, ekw = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    oh = (h + 2 * pad[0] - ekh) // stride[0] + 1
    ow = (w + 2 * pad[1] - ekw) // stride[1] + 1
    win = np.lib.stride_tricks.sliding_window_view(xp, (ekh, ekw), axis=(2, 3))
    win = win[:, :, : (oh - 1) * stride[0] + 1: stride[0], : (ow - 1) * stride[1] + 1: stride[1]]
    win = win[..., :: dilation[0], :: dilation[1]]  # n, c, oh, ow, kh, kw
    out = np.empty((n, co, oh, ow))
    og = co // group
    for g in range(group):
        out[:, g * og:(g + 1) * og] = np.einsum(
            "ncyxij,ocij->noyx", win[:, g * cg:(g + 1) * cg], weight[g * og:(g + 1) * og].astype(np.float64)
        )
    if bias is not None:
        out += bias.reshape(1, -1, 1, 1)
    return out


def np_max_pool(x, kernel, stride, pad=(0, 0)):
    """Caffe MAX pooling: ceil output size, last window starts inside the (padded) image, clipped."""
    n, c, h, w = x.shape
    oh = -(-(h + 2 * pad[0] - kernel[0]) // stride[0]) + 1
    ow = -(-(w + 2 * pad[1] - kernel[1]) // stride[1]) + 1
    if pad[0] and (oh - 1) * stride[0] >= h + pad[0]:
        oh -= 1
    if pad[1] and (ow - 1) * stride[1] >= w + pad[1]:
        ow -= 1
    out = np.empty((n, c, oh, ow))
    for i in range(oh):
        hs = max(i * stride[0] - pad[0], 0)
        he = min(i * stride[0] - pad[0] + kernel[0], h)
        for j in range(ow):
            ws = max(j * stride[1] - pad[1], 0)
            we = min(j * stride[1] - pad[1] + kernel[1], w)
            out[:, :, i, j] = x[:, :, hs:he, ws:we].max(axis=(2, 3))
    return out


def np_inner_product(x, weight, bias, axis=1):
    lead = x.shape[:axis]
    flat = x.reshape(*lead, -1).astype(np.float64)
    out = flat @ weight.reshape(weight.shape[-2], -1).astype(np.float64).T
    return out + bias.reshape(-1) if bias is not None else out


def np_softmax(x, axis=1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_forward(param: caffe_pb2.NetParameter, weights, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a (test-phase, upgraded) net of Input/Convolution/Pooling/InnerProduct/ReLU/Softmax layers.

    Returns the blobs by name and each layer's output under ``"@" + layer name``.
    """
    blobs = {k: v.astype(np.float64) for k, v in inputs.items()}
    for lp in param.layer:
        if any(r.phase == caffe_pb2.TRAIN for r in lp.include):
            continue
        if lp.type in ("Input", "Data"):
            continue
        x = blobs[lp.bottom[0]]
        w = [np.asarray(a) for a in weights[lp.name]] if lp.name in weights else []
        if lp.type == "Convolution":
            cp = lp.convolution_param
            kh, kw = _pair(cp.kernel_size, cp.kernel_h, cp.kernel_w, 1)
            weight = w[0].reshape(cp.num_output, -1, kh, kw)
            bias = w[1].reshape(-1) if cp.bias_term and len(w) > 1 else None
            y = np_conv(x, weight, bias, _pair(cp.stride, cp.stride_h, cp.stride_w, 1),
                        _pair(cp.pad, cp.pad_h, cp.pad_w, 0), _pair(cp.dilation, 0, 0, 1), cp.group)
        elif lp.type == "Pooling":
            pp = lp.pooling_param
            assert pp.pool == caffe_pb2.PoolingParameter.MAX
            k = (pp.kernel_h, pp.kernel_w) if pp.kernel_h else (pp.kernel_size, pp.kernel_size)
            s = (pp.stride_h, pp.stride_w) if pp.stride_h else (pp.stride, pp.stride)
            p = (pp.pad_h, pp.pad_w) if (pp.pad_h or pp.pad_w) else (pp.pad, pp.pad)
            y = np_max_pool(x, k, s, p)
        elif lp.type == "InnerProduct":
            ip = lp.inner_product_param
            y = np_inner_product(x, w[0], w[1] if ip.bias_term else None, ip.axis)
        elif lp.type == "ReLU":
            y = np.maximum(x, 0) + lp.relu_param.negative_slope * np.minimum(x, 0)
        elif lp.type == "Softmax":
            y = np_softmax(x, lp.softmax_param.axis)
        else:
            raise NotImplementedError(lp.type)
        blobs[lp.top[0]] = y
        blobs["@" + lp.name] = y  # each layer's own output (in-place layers overwrite their top)
    return blobs


def cv_forward(prototxt: Path, caffemodel: Path, x: np.ndarray, output: str | None = None) -> np.ndarray:
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    net.setInput(x.astype(np.float32))
    return net.forward(output) if output else net.forward()


# -- a small net written by dnntool, read by OpenCV ----------------------------------------------

SMALL_NET = """\
name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 10 dim: 11 } } }
layer {
  name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 bias_term: true }
}
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer {
  name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 6 kernel_h: 2 kernel_w: 3 stride: 2 pad_h: 1 pad_w: 0 group: 2 }
}
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 2 stride: 2 pad: 1 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool2" top: "fc" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def _random_weights(net: Net, seed: int = 0) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {
        layer.name: [rng.uniform(-0.5, 0.5, p.shape).astype(np.float32) for p in layer.params]
        for layer in net.layers if layer.params
    }


def test_small_net_written_by_us_runs_in_opencv(tmp_path):
    param = parse_net_text(SMALL_NET, "small.prototxt").param
    net = Net.from_param(param)
    shapes = {layer.name: layer.top_shapes[0] for layer in net.layers}
    assert shapes["pool1"] == (2, 4, 5, 5)  # ceil((10-3)/2)+1, ceil((11-3)/2)+1
    weights = _random_weights(net)
    assert [w.shape for w in weights["conv2"]] == [(6, 2, 2, 3), (6,)]
    proto, model = tmp_path / "small.prototxt", tmp_path / "small.caffemodel"
    write_prototxt(param, proto)
    save_caffemodel(model, param.layer, weights, name=param.name)
    assert check_weights(Net.from_prototxt(proto), load_weights(model))

    x = np.random.default_rng(1).standard_normal((2, 3, 10, 11)).astype(np.float32)
    ref = np_forward(param, weights, {"data": x})
    cvnet = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    cvnet.setInput(x)
    names = ["conv1", "relu1", "pool1", "conv2", "pool2", "fc", "prob"]
    outs = cvnet.forward(names)  # by layer name
    for name, out in zip(names, outs, strict=True):
        assert out.shape == shapes[name] == ref["@" + name].shape, name
        np.testing.assert_allclose(out, ref["@" + name], atol=1e-4, rtol=1e-4, err_msg=name)
    assert (outs[1] >= 0).all() and (outs[0] < 0).any()
    np.testing.assert_allclose(ref["prob"].sum(axis=1), 1.0, atol=1e-6)


def test_numpy_pooling_matches_caffe_ceil_rule():
    x = np.arange(2 * 1 * 5 * 5, dtype=np.float64).reshape(2, 1, 5, 5)
    y = np_max_pool(x, (2, 2), (2, 2))
    assert y.shape == (2, 1, 3, 3)  # ceil((5-2)/2)+1 = 3, last window clipped to one row/column
    assert y[0, 0, 2, 2] == x[0, 0, 4, 4]
    # pad 1, k 2, s 2 on 4: ceil((4+2-2)/2)+1 = 3, and the last window starts inside -> kept.
    assert np_max_pool(np.zeros((1, 1, 4, 4)), (2, 2), (2, 2), (1, 1)).shape == (1, 1, 3, 3)


# -- an upgraded V1 net read by OpenCV -----------------------------------------------------------

@needs_zoo
def test_opencv_reads_upgraded_v1_lenet(tmp_path):
    src = ZOO / "legacy_v1_2014_everpeace/examples/mnist"
    proto, model = tmp_path / "lenet.prototxt", tmp_path / "lenet.caffemodel"
    runner = CliRunner()
    for a, b in ((src / "lenet.prototxt", proto), (src / "lenet_iter_10000.caffemodel", model)):
        res = runner.invoke(cli, ["upgrade-net", str(a), "-o", str(b)])
        assert res.exit_code == 0, res.output
    assert "layers {" not in proto.read_text()
    upgraded = read_net(proto).param
    weights = load_weights(model)
    x = np.random.default_rng(2).random((1, 1, 28, 28)).astype(np.float32)
    out = cv_forward(proto, model, x)
    assert out.shape == (1, 10)
    ref = np_forward(upgraded, weights.blobs, {"data": x})["prob"]
    np.testing.assert_allclose(out, ref, atol=1e-4)
    # The V1 trained LeNet is a real classifier: a confident, normalised output.
    assert abs(float(out.sum()) - 1) < 1e-4


@needs_zoo
def test_upgraded_v1_caffemodel_is_v2_on_the_wire(tmp_path):
    out = tmp_path / "cifar.caffemodel"
    res = CliRunner().invoke(cli, ["upgrade-net", str(ZOO / "legacy_v1_2014_everpeace/examples/cifar10/"
                                                        "cifar10_quick_iter_5000.caffemodel"), "-o", str(out)])
    assert res.exit_code == 0, res.output
    raw = caffe_pb2.NetParameter.FromString(out.read_bytes())
    assert raw.layer and not raw.layers
    proto = ZOO / "legacy_v1_2014_everpeace/examples/cifar10/cifar10_quick.prototxt"
    up_proto = tmp_path / "cifar.prototxt"
    write_prototxt(read_net(proto).param, up_proto)
    x = np.random.default_rng(3).random((1, 3, 32, 32)).astype(np.float32) * 50
    y = cv_forward(up_proto, out, x)
    assert y.shape == (1, 10) and abs(float(y.sum()) - 1) < 1e-4


# -- OpenCV's own Caffe test files ---------------------------------------------------------------

OPENCV_CASES = ["layer_convolution", "layer_deconvolution", "layer_inner_product"]


@needs_zoo
@pytest.mark.parametrize("case", OPENCV_CASES)
def test_opencv_layer_test_files_match_our_net(case):
    proto, model = LAYERS / f"{case}.prototxt", LAYERS / f"{case}.caffemodel"
    net = Net.from_prototxt(proto)
    weights = load_weights(model)
    found = check_weights(net, weights)
    assert found == {"output": [tuple(p.shape) for p in net.layer("output").params]}
    assert len(found["output"]) == 2
    expected = np.load(LAYERS / f"{case}.npy")
    assert net.layer("output").top_shapes == [expected.shape]
    # and OpenCV agrees with its own reference output on these files
    x = np.load(LAYERS / ("layer_deconvolution.input.npy" if case == "layer_deconvolution" else "blob.npy"))
    assert net.layer("input").top_shapes == [x.shape]
    np.testing.assert_allclose(cv_forward(proto, model, x), expected, atol=1e-4)


@needs_zoo
@pytest.mark.parametrize("case", ["layer_convolution", "layer_inner_product"])
def test_opencv_reference_outputs_from_our_weights(case):
    """Our reader's weights + the numpy interpreter reproduce OpenCV's reference outputs."""
    param = read_caffemodel(LAYERS / f"{case}.caffemodel")
    weights = load_weights(LAYERS / f"{case}.caffemodel")
    x = np.load(LAYERS / "blob.npy")
    out = np_forward(read_net(LAYERS / f"{case}.prototxt").param, weights.blobs, {"input": x})["output"]
    assert [lp.name for lp in param.layer] == ["input", "output"]
    np.testing.assert_allclose(out, np.load(LAYERS / f"{case}.npy"), atol=1e-4)
