"""decompose: truncated SVD of InnerProduct layers, checked against Eckart-Young and the full rank."""

from __future__ import annotations

import numpy as np
import pytest

from dnntool.errors import NetError, UsageError
from dnntool.io.caffemodel import load_weights
from dnntool.io.prototxt import read_net
from dnntool.net import Net
from dnntool.net.weights import layer_arrays
from dnntool.slim.decompose import choose_rank, decompose_files
from tests.engine.oracle import assert_close, run_ours
from tests.slim import nets

FC = nets.input_layer((4, 3, 8, 8)) + """
layer { name: "fc6" type: "InnerProduct" bottom: "data" top: "fc6" inner_product_param { num_output: 64 } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7" inner_product_param { num_output: 48 transpose: true } }
layer { name: "fc8" type: "InnerProduct" bottom: "fc7" top: "fc8" inner_product_param { num_output: 10 bias_term: false } }
"""


def test_full_rank_reproduces_the_net(tmp_path):
    proto, model, net, _ = nets.write(tmp_path, "fc", FC)
    rep = decompose_files(proto, model, tmp_path / "out", ["fc6", "fc7", "fc8"], rank=1000, batches=2)
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    out = Net.from_prototxt(tmp_path / "out.prototxt", "test")
    got = run_ours(out, layer_arrays(out, load_weights(tmp_path / "out.caffemodel")), {"data": x}, ["fc8"])
    ref = run_ours(net, layer_arrays(net, load_weights(model)), {"data": x}, ["fc8"])
    assert_close(got["fc8"], ref["fc8"], 1e-4)
    assert [r[2] for r in rep.rows] == [64, 48, 10]
    assert "fc6: rank 1000 exceeds min(N, K) = 64; using 64" in rep.notes
    assert "fc6: rank 64 does not reduce the params (12,352 -> 16,448; it pays up to rank 47)" in rep.notes


def test_truncation_error_is_eckart_young(tmp_path):
    proto, model, *_ = nets.write(tmp_path, "fc", FC)
    rep = decompose_files(proto, model, tmp_path / "out", ["fc6", "fc7"], rank=16, batches=0)
    w = load_weights(model)
    new = load_weights(tmp_path / "out.caffemodel")
    for name, transposed in (("fc6", False), ("fc7", True)):
        orig = w[name][0].T if transposed else w[name][0]
        s = np.linalg.svd(orig.astype(np.float64), compute_uv=False)
        approx = new[f"{name}_U"][0].astype(np.float64) @ new[f"{name}_L"][0]
        err = np.linalg.norm(orig - approx) / np.linalg.norm(orig)
        np.testing.assert_allclose(err, np.sqrt((s[16:] ** 2).sum() / (s ** 2).sum()), rtol=1e-4)
        row = next(r for r in rep.rows if r[0] == name)
        assert row[4] == pytest.approx(err, rel=1e-3)
        np.testing.assert_array_equal(new[f"{name}_U"][1], w[name][1])
        assert len(new[f"{name}_L"]) == 1
    k, n = 192, 64
    assert rep.rows[0][5:7] == [n * k + n, 16 * (n + k) + n]


def test_prototxt_pairs_replace_the_layers(tmp_path):
    proto, model, *_ = nets.write(tmp_path, "fc", FC)
    decompose_files(proto, model, tmp_path / "out", ["fc7"], rank=8, batches=0)
    layers = read_net(tmp_path / "out.prototxt").param.layer
    assert [lp.name for lp in layers] == ["data", "fc6", "relu6", "fc7_L", "fc7_U", "fc8"]
    low, up = layers[3], layers[4]
    assert (list(low.bottom), list(low.top), low.inner_product_param.num_output) == (["fc6"], ["fc7_L"], 8)
    assert not low.inner_product_param.bias_term and not up.inner_product_param.transpose
    assert (list(up.bottom), list(up.top), up.inner_product_param.num_output) == (["fc7_L"], ["fc7"], 48)


def test_energy_picks_the_smallest_rank():
    s = np.array([4.0, 2.0, 1.0, 1.0])  # squares 16, 4, 1, 1 of 22
    assert choose_rank(s, energy=16 / 22) == 1
    assert choose_rank(s, energy=0.8) == 2
    assert choose_rank(s, energy=1.0) == 4
    with pytest.raises(UsageError, match="give --rank R or --energy E"):
        choose_rank(s)


def test_measured_error_is_reported_per_layer_and_output(tmp_path):
    proto, model, *_ = nets.write(tmp_path, "fc", FC)
    rep = decompose_files(proto, model, tmp_path / "out", ["fc6"], energy=0.5, batches=2)
    assert set(rep.output_diff) == {"fc6", "fc8"}
    assert rep.rows[0][7] == pytest.approx(rep.output_diff["fc6"].max_rel, rel=1e-3) and rep.rows[0][7] > 0.01


def test_errors(tmp_path):
    proto, model, *_ = nets.write(tmp_path, "fc", FC)
    with pytest.raises(UsageError, match="'relu6' is not an InnerProduct of net"):
        decompose_files(proto, model, tmp_path / "out", ["relu6"], rank=4)
    text = FC + 'layer { name: "fc6_L" type: "ReLU" bottom: "fc8" top: "x" }\n'
    proto, model, *_ = nets.write(tmp_path, "clash", text)
    with pytest.raises(NetError, match="the net already has a layer 'fc6_L'"):
        decompose_files(proto, model, tmp_path / "out", ["fc6"], rank=4)
