"""prune: magnitude (zeros) and structured (filters removed, every reader rewritten)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from dnntool.cli import cli
from dnntool.errors import NetError, UsageError
from dnntool.io.caffemodel import load_weights
from dnntool.io.prototxt import read_net
from dnntool.net import Net
from dnntool.net.weights import layer_arrays
from dnntool.slim.prune import magnitude_prune, prune_files, sensitivity
from tests.engine.oracle import assert_close, run_ours
from tests.slim import nets


def _run(proto, model, x, outputs):
    net = Net.from_prototxt(proto, "test")
    return run_ours(net, layer_arrays(net, load_weights(model)), {"data": x}, outputs=outputs)


def _zeroed_reference(proto, model, tmp_path, zero: dict[str, np.ndarray], x, outputs):
    """The original net with the given output channels silenced (weights and bias, or Scale
    gamma/beta, set to 0): what removing those filters must reproduce when zeros propagate."""
    net = Net.from_prototxt(proto, "test")
    arrays = {k: [a.copy() for a in v] for k, v in layer_arrays(net, load_weights(model)).items()}
    for layer, channels in zero.items():
        for a in arrays[layer]:
            a[channels] = 0
    return run_ours(net, arrays, {"data": x}, outputs=outputs)


def _removed(before: int, proto, layer) -> np.ndarray:
    return before - Net.from_prototxt(proto, "test").layer(layer).top_shapes[0][1]


# -- magnitude -------------------------------------------------------------------------------------
def test_magnitude_per_layer_zeroes_the_smallest(tmp_path):
    _proto, model, net, _w = nets.write(tmp_path, "r", nets.resnet_block())
    blobs = layer_arrays(net, load_weights(model))
    new, rows = magnitude_prune(net, blobs, 0.5)
    for r in rows:
        old, cur = blobs[r.layer][0], new[r.layer][0]
        assert r.zeros_after == int(np.floor(0.5 * old.size + 0.5))
        assert np.abs(old[cur == 0]).max() <= np.abs(old[cur != 0]).min()
        assert np.array_equal(cur[cur != 0], old[cur != 0])
        assert all(np.array_equal(a, b) for a, b in zip(new[r.layer][1:], blobs[r.layer][1:], strict=True))


def test_magnitude_global_uses_one_threshold(tmp_path):
    _proto, model, net, _ = nets.write(tmp_path, "r", nets.resnet_block())
    blobs = layer_arrays(net, load_weights(model))
    new, rows = magnitude_prune(net, blobs, 0.3, scope="global")
    zeroed = np.concatenate([np.abs(blobs[r.layer][0][new[r.layer][0] == 0]) for r in rows])
    kept = np.concatenate([np.abs(blobs[r.layer][0][new[r.layer][0] != 0]) for r in rows])
    total = sum(r.weights for r in rows)
    assert zeroed.size == int(np.floor(0.3 * total + 0.5)) and zeroed.max() <= kept.min()
    assert len({round(r.sparsity, 2) for r in rows}) > 1  # layers end up with different sparsities


def test_magnitude_files_and_report(tmp_path):
    proto, model, *_ = nets.write(tmp_path, "r", nets.resnet_block())
    rep = prune_files(proto, model, tmp_path / "out", sparsity=0.5, layers=["conv1", "fc"], batches=1)
    assert [r[0] for r in rep.rows] == ["conv1", "fc"] and rep.rows[0][5] == "50.0%"
    assert rep.after.params == rep.before.params and rep.after.nonzero == rep.before.nonzero - 108 - 60
    assert rep.after.bytes == rep.before.bytes
    assert read_net(tmp_path / "out.prototxt").param == Net.from_prototxt(proto).param_proto


def test_bad_layer_names_are_usage_errors(tmp_path):
    proto, model, *_ = nets.write(tmp_path, "r", nets.resnet_block())
    with pytest.raises(UsageError, match=r"--layers: 'pool' is not a Convolution, Deconvolution or InnerProduct"):
        prune_files(proto, model, tmp_path / "o", sparsity=0.5, layers=["pool"])
    with pytest.raises(UsageError, match="--structured needs --ratio"):
        prune_files(proto, model, tmp_path / "o", structured=True, layers=["conv1"])


# -- structured ------------------------------------------------------------------------------------
def test_filters_with_smallest_l1_norm_are_removed(tmp_path):
    text = (nets.input_layer() + nets.conv("a", "data", 8, bias=True) + nets.relu("ra", "a")
            + nets.conv("b", "a", 4, bias=True))
    proto, model, _net, _ = nets.write(tmp_path, "chain", text)
    w = load_weights(model)["a"][0]
    rep = prune_files(proto, model, tmp_path / "out", structured=True, ratio=0.25, layers=["a"], batches=0)
    kept = np.sort(np.argsort(-np.abs(w).reshape(8, -1).sum(1), kind="stable")[:6])
    out = load_weights(tmp_path / "out.caffemodel")
    np.testing.assert_array_equal(out["a"][0], w[kept])
    np.testing.assert_array_equal(out["b"][0], load_weights(model)["b"][0][:, kept])
    assert rep.rows[0][:3] == ["a", "Convolution", "8 -> 6"]
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    gone = np.setdiff1d(np.arange(8), kept)
    ref = _zeroed_reference(proto, model, tmp_path, {"a": gone}, x, ["b"])
    assert_close(_run(tmp_path / "out.prototxt", tmp_path / "out.caffemodel", x, ["b"])["b"], ref["b"], 1e-5)


def test_resnet_branches_meeting_at_an_eltwise_are_cut_alike(tmp_path):
    proto, model, _net, _ = nets.write(tmp_path, "r", nets.resnet_block(), factor=2.0)
    rep = prune_files(proto, model, tmp_path / "out", structured=True, ratio=0.5,
                      layers=["res2a_branch1", "res2a_branch2b"], batches=1)
    assert rep.extra["groups"] == [["res2a_branch1", "res2a_branch2b"]]
    out = Net.from_prototxt(tmp_path / "out.prototxt", "test")
    assert out.layer("res2a").top_shapes[0][1] == 6 and out.layer("fc").params[0].shape == (10, 6)
    w1, w2 = load_weights(model)["res2a_branch1"][0], load_weights(tmp_path / "out.caffemodel")["res2a_branch1"][0]
    kept = [int(np.flatnonzero((w1 == f).all(axis=(1, 2, 3)))[0]) for f in w2]
    gone = np.setdiff1d(np.arange(12), kept)
    x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
    ref = _zeroed_reference(proto, model, tmp_path, {"scale_2a_branch1": gone, "scale_2a_branch2b": gone}, x, ["prob"])
    assert_close(_run(tmp_path / "out.prototxt", tmp_path / "out.caffemodel", x, ["prob"])["prob"], ref["prob"], 1e-5)


def test_a_cut_breaking_an_eltwise_is_refused_naming_the_layers(tmp_path):
    proto, model, *_ = nets.write(tmp_path, "r", nets.resnet_block())
    with pytest.raises(NetError) as e:
        prune_files(proto, model, tmp_path / "o", structured=True, ratio=0.5, layers=["res2a_branch2b"])
    assert e.value.message == (
        "cannot cut 'res2a_branch2b': Eltwise 'res2a' pairs the channels of 'bn2a_branch1' (from Convolution"
        " 'res2a_branch1', not cut) and 'sc2a_branch2b' (cut via res2a_branch2b); cut all its branches alike"
        " (add res2a_branch1 to --layers) or leave res2a_branch2b out")


@pytest.mark.parametrize(("layers", "message"), [
    (["fc"], "cannot cut 'fc': Softmax 'prob' reads 'fc', whose channels the cut changes, and prune cannot"
             " rewrite Softmax layers for fewer channels"),
    (["conv2_dw"], "cannot cut filters of 'conv2_dw': Convolution 'conv2_dw' is grouped/depthwise: its filters"
                   " follow its input channels; cut the layer before it"),
    (["conv2_pw"], "cannot cut 'conv2_pw': Deconvolution 'up' reads 'conv2_pw', whose channels the cut changes,"
                   " and it is a grouped convolution"),
])
def test_cuts_that_cannot_be_made(tmp_path, layers, message):
    text = nets.resnet_block() if layers == ["fc"] else nets.mobilenet_block()
    proto, model, *_ = nets.write(tmp_path, "n", text)
    with pytest.raises(NetError) as e:
        prune_files(proto, model, tmp_path / "o", structured=True, ratio=0.5, layers=layers)
    assert e.value.message == message


def test_concat_offsets_and_flatten_columns(tmp_path):
    text = (nets.input_layer((2, 3, 8, 8)) + nets.conv("a", "data", 4, bias=True) + nets.conv("b", "data", 6, bias=True)
            + nets.relu("rb", "b")
            + 'layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "cat" }\n'
            + nets.conv("c", "cat", 5, bias=True) + nets.relu("rc", "c")
            + 'layer { name: "pool" type: "Pooling" bottom: "c" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
            + 'layer { name: "flat" type: "Flatten" bottom: "pool" top: "flat" }\n'
            + 'layer { name: "fc" type: "InnerProduct" bottom: "flat" top: "fc" inner_product_param { num_output: 3 } }\n')
    proto, model, _net, _ = nets.write(tmp_path, "cat", text)
    prune_files(proto, model, tmp_path / "out", structured=True, ratio=0.4, layers=["b", "c"], batches=0)
    out = Net.from_prototxt(tmp_path / "out.prototxt", "test")
    assert out.layer("c").params[0].shape == (3, 4 + 4, 3, 3) and out.layer("fc").params[0].shape == (3, 3 * 16)
    old, new = load_weights(model), load_weights(tmp_path / "out.caffemodel")
    kb = [int(np.flatnonzero((old["b"][0] == f).all(axis=(1, 2, 3)))[0]) for f in new["b"][0]]
    kc = [int(np.flatnonzero((old["c"][0][:, [0, 1, 2, 3, *(4 + k for k in kb)]] == f).all(axis=(1, 2, 3)))[0])
          for f in new["c"][0]]
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    ref = _zeroed_reference(proto, model, tmp_path, {"b": np.setdiff1d(np.arange(6), kb),
                                                     "c": np.setdiff1d(np.arange(5), kc)}, x, ["fc"])
    assert_close(_run(tmp_path / "out.prototxt", tmp_path / "out.caffemodel", x, ["fc"])["fc"], ref["fc"], 1e-5)


def test_depthwise_and_batchnorm_follow_the_cut(tmp_path):
    proto, model, *_ = nets.write(tmp_path, "m", nets.mobilenet_block(depthwise_type=True, deconv=False))
    rep = prune_files(proto, model, tmp_path / "out", structured=True, ratio=0.5, layers=["conv1", "conv2_pw"],
                      batches=1)
    out = Net.from_prototxt(tmp_path / "out.prototxt", "test")
    assert [out.layer(n).top_shapes[0][1] for n in ("conv1", "conv2_dw", "conv2_pw")] == [4, 4, 8]
    w = load_weights(tmp_path / "out.caffemodel")
    assert [a.shape for a in w["bn_conv2_dw"]] == [(4,), (4,), (1,)] and w["scale_conv2_pw"][0].shape == (8,)
    assert {r[0] for r in rep.rows} >= {"conv1", "conv2_dw", "conv2_pw", "fc1"}


def test_counts_equal_param_count_and_flops_on_the_result(tmp_path):
    proto, model, *_ = nets.write(tmp_path, "m", nets.mobilenet_block())
    rep = prune_files(proto, model, tmp_path / "out", structured=True, ratio=0.3, layers=["conv1", "fc1"],
                      batches=0)
    pc = CliRunner().invoke(cli, ["param-count", str(tmp_path / "out.prototxt"), "--weights",
                                  str(tmp_path / "out.caffemodel"), "--format", "json"])
    fl = CliRunner().invoke(cli, ["flops", str(tmp_path / "out.prototxt"), "--format", "json"])
    assert pc.exit_code == 0 and fl.exit_code == 0, pc.output + fl.output
    assert json.loads(pc.output)["totals"]["params"] == rep.after.params < rep.before.params
    assert json.loads(fl.output)["totals"]["macs"] == rep.after.macs < rep.before.macs


def test_sensitivity_scans_ratios_per_layer(tmp_path):
    from tests.data.digits import digits_lmdb, lenet_like

    digits_lmdb(tmp_path / "db", 100)
    proto = tmp_path / "lenet.prototxt"
    proto.write_text(lenet_like(str(tmp_path / "db"), batch=50))
    net = Net.from_prototxt(proto, "test")
    from dnntool.io.caffemodel import save_caffemodel
    from dnntool.net.weights import init_weights

    w = init_weights(net, 0)
    save_caffemodel(tmp_path / "w.caffemodel", [layer.param for layer in net.layers], w.blobs)
    res = sensitivity(proto, tmp_path / "w.caffemodel", ratios=[0.25, 0.5])
    assert res.metric == "accuracy" and res.images == 100
    assert [(r.layer, r.ratio, r.filters) for r in res.rows] == [("conv1", 0.25, "8 -> 6"), ("conv1", 0.5, "8 -> 4")]
    assert res.rows[1].params == 4 * 9 + 4 + 10 * 4 * 9 + 10
    assert res.refused == {"ip": "cannot cut 'ip': Accuracy 'accuracy' reads 'ip', whose channels the cut"
                                 " changes, and prune cannot rewrite Accuracy layers for fewer channels"}
    assert res.lines()[1].split()[:2] == ["layer", "ratio"]
