"""fold-bn: BatchNorm (+ Scale) folded into the layer before it; outputs unchanged (ORT and OpenCV)."""

from __future__ import annotations

import numpy as np
import pytest

from dnntool.io.caffemodel import load_weights
from dnntool.io.prototxt import read_net
from dnntool.net import Net
from dnntool.net.weights import layer_arrays
from dnntool.slim.fold_bn import fold_bn, fold_bn_files
from dnntool.slim.report import all_blobs
from tests.engine.oracle import assert_close, has_opencv_caffe, run_ours
from tests.slim import nets

NETS = {
    "resnet": nets.resnet_block(),
    "mobilenet": nets.mobilenet_block(),
    "mobilenet_dwtype": nets.mobilenet_block(depthwise_type=True),
}


def _outputs(proto, model, net_ref, inputs):
    net = Net.from_prototxt(proto, "test")
    arrays = layer_arrays(net, load_weights(model))
    return run_ours(net, arrays, inputs, outputs=[net_ref.blobs[t].name for t in net_ref.output_ids()])


@pytest.mark.parametrize("name", sorted(NETS))
def test_fold_removes_every_batchnorm_and_keeps_outputs(tmp_path, name):
    proto, model, net, _ = nets.write(tmp_path, name, NETS[name], factor=7.0)
    rep = fold_bn_files(proto, model, tmp_path / "out", batches=2)
    out_net = Net.from_prototxt(tmp_path / "out.prototxt", "test")
    assert not [layer for layer in out_net.layers if layer.type in ("BatchNorm", "Scale")]
    assert rep.extra["kept"] == []
    x = {"data": np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)}
    ref = run_ours(net, layer_arrays(net, load_weights(model)), x)
    got = _outputs(tmp_path / "out.prototxt", tmp_path / "out.caffemodel", net, x)
    for k in ref:
        assert_close(got[k], ref[k], 1e-4, f"{name} {k}")
    assert all(d.max_rel <= 1e-4 for d in rep.output_diff.values())
    assert rep.after.stored == 0 and rep.before.stored > 0


def test_report_lists_each_fold_and_added_bias(tmp_path):
    proto, model, *_ = nets.write(tmp_path, "m", NETS["mobilenet"])
    rep = fold_bn_files(proto, model, tmp_path / "out", batches=0)
    rows = {r[0]: r for r in rep.rows}
    assert rows["conv2_dw"][2] == "bn_conv2_dw"  # BatchNorm without Scale
    assert rows["conv2_pw"][4] == ""  # had a bias already
    assert rows["fc1"][2:] == ["bn_fc1 + scale_fc1", "fc1_sc", "bias added"]
    assert rows["up"][1] == "Deconvolution"
    text = (tmp_path / "out.prototxt").read_text()
    assert 'top: "fc1_sc"' in text and "BatchNorm" not in text


@pytest.mark.skipif(not has_opencv_caffe(), reason="OpenCV's Caffe importer is not available")
@pytest.mark.parametrize("name", ["resnet", "mobilenet"])
def test_opencv_loads_the_folded_net(tmp_path, name):
    import cv2

    proto, model, net, _ = nets.write(tmp_path, name, NETS[name], factor=2.0)
    fold_bn_files(proto, model, tmp_path / "out", batches=0)
    x = np.random.default_rng(2).standard_normal((2, 3, 16, 16)).astype(np.float32)
    out = net.blobs[net.output_ids()[0]].name
    ref = run_ours(net, layer_arrays(net, load_weights(model)), {"data": x}, outputs=[out])[out]
    cv = cv2.dnn.readNetFromCaffe(str(tmp_path / "out.prototxt"), str(tmp_path / "out.caffemodel"))
    cv.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cv.setInput(x, "data")
    assert_close(cv.forward(out), ref, 1e-4, f"OpenCV {name}")


def test_math_uses_each_batchnorm_eps_and_scale_factor():
    """A numpy reference on a 1x1 convolution: W' = W * gamma / sqrt(var/f + eps), b' = ..."""
    text = (nets.input_layer((1, 2, 3, 3)) + nets.conv("c", "data", 2, k=1, pad=0, bias=True)
            + nets.bn("c", "c", eps=0.5))
    net = nets.build(text)
    w, b = np.array([[[[1.0]], [[2.0]]], [[[3.0]], [[-1.0]]]], np.float32), np.array([0.5, -1.0], np.float32)
    mean, var, f = np.array([4.0, 2.0], np.float32), np.array([2.0, 6.0], np.float32), np.array([2.0], np.float32)
    gamma, beta = np.array([3.0, 0.5], np.float32), np.array([1.0, 2.0], np.float32)
    res = fold_bn(net, {"c": [w, b], "bn_c": [mean, var, f], "scale_c": [gamma, beta]})
    a = gamma / np.sqrt(var / 2.0 + 0.5)
    np.testing.assert_allclose(res.blobs["c"][0], w * a[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(res.blobs["c"][1], (b - mean / 2.0) * a + beta, rtol=1e-6)
    assert set(res.blobs) == {"c"}


def test_zero_scale_factor_means_zero_statistics():
    net = nets.build(nets.input_layer((1, 1, 2, 2)) + nets.conv("c", "data", 1, k=1, pad=0)
                     + nets.bn("c", "c", scale=False))
    res = fold_bn(net, {"c": [np.ones((1, 1, 1, 1), np.float32)],
                        "bn_c": [np.ones(1, np.float32), np.ones(1, np.float32), np.zeros(1, np.float32)]})
    np.testing.assert_allclose(res.blobs["c"][0].reshape(-1), [1 / np.sqrt(1e-5)], rtol=1e-6)
    np.testing.assert_allclose(res.blobs["c"][1], [0.0])


def test_matches_on_the_graph_not_the_file_order(tmp_path):
    """Two branches whose BatchNorm/Scale layers are interleaved in the file."""
    text = (nets.input_layer() + nets.conv("a", "data", 4) + nets.conv("b", "data", 4)
            + 'layer { name: "bn_b" type: "BatchNorm" bottom: "b" top: "b" }\n'
            + 'layer { name: "bn_a" type: "BatchNorm" bottom: "a" top: "a_bn" }\n'
            + 'layer { name: "scale_a" type: "Scale" bottom: "a_bn" top: "a_bn" scale_param { bias_term: true } }\n'
            + 'layer { name: "scale_b" type: "Scale" bottom: "b" top: "b_sc" scale_param { bias_term: true } }\n'
            + 'layer { name: "sum" type: "Eltwise" bottom: "a_bn" bottom: "b_sc" top: "sum" }\n')
    proto, model, _net, _ = nets.write(tmp_path, "order", text, factor=3.0)
    rep = fold_bn_files(proto, model, tmp_path / "out", batches=1)
    assert sorted((r[0], r[2]) for r in rep.rows) == [("a", "bn_a + scale_a"), ("b", "bn_b + scale_b")]
    assert rep.output_diff["sum"].max_rel <= 1e-4


def test_unfoldable_batchnorms_stay_with_the_reason(tmp_path):
    text = (nets.input_layer()
            + 'layer { name: "bn_in" type: "BatchNorm" bottom: "data" top: "data_bn" }\n'
            + nets.conv("a", "data_bn", 4) + nets.conv("b", "data_bn", 4)
            + 'layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "cat" }\n'
            + nets.bn("cat", "cat")
            + nets.conv("c", "cat", 4)
            + 'layer { name: "bn_c" type: "BatchNorm" bottom: "c" top: "c_bn" }\n'
            + 'layer { name: "side" type: "ReLU" bottom: "c" top: "side" }\n'
            + nets.conv("d", "c_bn", 4)
            + 'layer { name: "bn_d" type: "BatchNorm" bottom: "d" top: "d" batch_norm_param { use_global_stats: false } }\n'
            + 'layer { name: "sum" type: "Eltwise" bottom: "d" bottom: "side" top: "sum" }\n')
    proto, model, net, _ = nets.write(tmp_path, "unfold", text, factor=2.0)
    rep = fold_bn_files(proto, model, tmp_path / "out", batches=1)
    kept = {k["layer"]: k["reason"] for k in rep.extra["kept"]}
    assert kept == {
        "bn_in": "its input 'data' comes from data layer 'data'",
        "bn_cat": "its input 'cat' comes from Concat 'cat', not a Convolution, Deconvolution,"
                  " DepthwiseConvolution or InnerProduct",
        "bn_c": "its input 'c' also feeds 'side'",
        "bn_d": "it uses batch statistics at test time (use_global_stats: false)",
    }
    assert rep.extra["folded"] == 0 and "nothing to fold" in rep.notes[0]
    out = read_net(tmp_path / "out.prototxt").param
    assert [lp.name for lp in out.layer] == [lp.name for lp in net.param_proto.layer]
    assert rep.output_diff["sum"].max_abs == 0.0


def test_other_phase_layers_and_blobs_are_kept(tmp_path):
    text = ('layer { name: "train_data" type: "Input" top: "data" include { phase: TRAIN }'
            ' input_param { shape { dim: 4 dim: 3 dim: 16 dim: 16 } } }\n'
            'layer { name: "data" type: "Input" top: "data" include { phase: TEST }'
            ' input_param { shape { dim: 2 dim: 3 dim: 16 dim: 16 } } }\n'
            + nets.conv("c", "data", 4) + nets.bn("c", "c")
            + 'layer { name: "extra" type: "InnerProduct" bottom: "c" top: "extra" include { phase: TRAIN }'
              ' inner_product_param { num_output: 2 } }\n')
    _proto, model, net, _w = nets.write(tmp_path, "phases", text)
    blobs = all_blobs(net, load_weights(model))
    blobs["extra"] = [np.ones((2, 1024), np.float32), np.zeros(2, np.float32)]  # a TRAIN-only layer's
    res = fold_bn(net, blobs)
    assert [lp.name for lp in res.param.layer] == ["train_data", "data", "c", "extra"]
    assert res.param.layer[2].convolution_param.bias_term
    assert set(res.blobs) == {"c", "extra"}


def test_chained_batchnorms_fold_into_one_layer(tmp_path):
    text = (nets.input_layer() + nets.conv("c", "data", 4) + nets.bn("c", "c")
            + 'layer { name: "bn2" type: "BatchNorm" bottom: "c" top: "c2" }\n')
    proto, model, *_ = nets.write(tmp_path, "chain", text, factor=2.0)
    rep = fold_bn_files(proto, model, tmp_path / "out", batches=1)
    assert rep.extra["folded"] == 2 and rep.output_diff["c2"].max_rel <= 1e-4
    assert [lp.name for lp in read_net(tmp_path / "out.prototxt").param.layer] == ["data", "c"]


def test_output_is_deterministic(tmp_path):
    proto, model, *_ = nets.write(tmp_path, "r", NETS["resnet"])
    fold_bn_files(proto, model, tmp_path / "a", batches=0)
    fold_bn_files(proto, model, tmp_path / "b", batches=0)
    for ext in (".prototxt", ".caffemodel"):
        assert (tmp_path / f"a{ext}").read_bytes() == (tmp_path / f"b{ext}").read_bytes()
