"""``dnntool init-weights``: Caffe's fillers (statistics), determinism, and files others can read."""

from __future__ import annotations

import math

import numpy as np
import pytest
from click.testing import CliRunner

from dnntool.cli import cli
from dnntool.io.caffemodel import load_weights
from dnntool.net import Net
from dnntool.net.weights import init_weights
from dnntool.samples import sample

NET = """
name: "fillers"
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 16 dim: 12 dim: 12 } } }
layer { name: "xavier" type: "Convolution" bottom: "data" top: "a"
  convolution_param { num_output: 64 kernel_size: 5 weight_filler { type: "xavier" }
                      bias_filler { type: "constant" value: 0.1 } } }
layer { name: "xavier_avg" type: "Convolution" bottom: "data" top: "b"
  convolution_param { num_output: 64 kernel_size: 5
                      weight_filler { type: "xavier" variance_norm: AVERAGE } } }
layer { name: "msra" type: "Convolution" bottom: "data" top: "c"
  convolution_param { num_output: 64 kernel_size: 5 weight_filler { type: "msra" } } }
layer { name: "gauss" type: "InnerProduct" bottom: "data" top: "d"
  inner_product_param { num_output: 100 weight_filler { type: "gaussian" mean: 0.5 std: 0.01 } } }
layer { name: "uniform" type: "InnerProduct" bottom: "data" top: "e"
  inner_product_param { num_output: 50 weight_filler { type: "uniform" min: -2 max: 3 } } }
layer { name: "unitball" type: "InnerProduct" bottom: "data" top: "f"
  inner_product_param { num_output: 20 weight_filler { type: "positive_unitball" } } }
layer { name: "up" type: "Deconvolution" bottom: "data" top: "g"
  convolution_param { num_output: 16 group: 16 kernel_size: 4 stride: 2 pad: 1 bias_term: false
                      weight_filler { type: "bilinear" } } }
"""


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    d = tmp_path_factory.mktemp("init")
    (d / "net.prototxt").write_text(NET)
    res = run("init-weights", d / "net.prototxt", "-o", d / "w.caffemodel", "--seed", 7)
    assert res.exit_code == 0, res.output
    assert res.output == f"wrote {d / 'w.caffemodel'}: 7 layers, {count_values():,} values (seed 7)\n"
    return d, load_weights(d / "w.caffemodel")


def count_values() -> int:
    conv = 64 * 16 * 25
    return (conv + 64) + (conv + 64) + (conv + 64) + (100 * 2304 + 100) + (50 * 2304 + 50) + (20 * 2304 + 20) + 16 * 16


def test_xavier_is_uniform_within_sqrt_3_over_fan_in(filled):
    _, w = filled
    x = w["xavier"][0]
    bound = math.sqrt(3 / 400)  # fan_in = 16 * 5 * 5
    assert x.shape == (64, 16, 5, 5) and np.abs(x).max() <= bound and np.abs(x).max() > 0.99 * bound
    assert x.var() == pytest.approx(bound**2 / 3, rel=0.05) and abs(x.mean()) < 0.01 * bound
    np.testing.assert_array_equal(w["xavier"][1], np.full(64, 0.1, np.float32))


def test_xavier_average_uses_fan_in_and_fan_out(filled):
    _, w = filled
    bound = math.sqrt(3 / ((400 + 1600) / 2))  # fan_out = 64 * 5 * 5
    assert np.abs(w["xavier_avg"][0]).max() <= bound and np.abs(w["xavier_avg"][0]).max() > 0.99 * bound
    np.testing.assert_array_equal(w["xavier_avg"][1], np.zeros(64, np.float32))  # default: constant 0


def test_msra_is_gaussian_with_std_sqrt_2_over_fan_in(filled):
    _, w = filled
    x = w["msra"][0]
    assert x.std() == pytest.approx(math.sqrt(2 / 400), rel=0.03) and abs(x.mean()) < 0.003


def test_gaussian_and_uniform(filled):
    _, w = filled
    g = w["gauss"][0]
    assert g.shape == (100, 2304) and g.mean() == pytest.approx(0.5, abs=1e-3) and g.std() == pytest.approx(0.01, rel=0.02)
    u = w["uniform"][0]
    assert u.min() >= -2 and u.max() <= 3 and u.min() < -1.99 and u.max() > 2.99
    assert u.mean() == pytest.approx(0.5, abs=0.02)


def test_positive_unitball_rows_sum_to_one(filled):
    _, w = filled
    x = w["unitball"][0]
    assert (x >= 0).all()
    np.testing.assert_allclose(x.sum(axis=1), 1, rtol=1e-5)


def test_bilinear_is_the_upsampling_kernel(filled):
    _, w = filled
    k = w["up"][0]
    row = np.array([0.25, 0.75, 0.75, 0.25], np.float32)  # 1 - |i/f - c|, f = 2, c = 0.75
    assert k.shape == (16, 1, 4, 4)
    for i in range(16):
        np.testing.assert_allclose(k[i, 0], np.outer(row, row), rtol=1e-6)


def test_seed_makes_it_deterministic(filled, tmp_path):
    d, w = filled
    run("init-weights", d / "net.prototxt", "-o", tmp_path / "again.caffemodel", "--seed", 7, "-q")
    run("init-weights", d / "net.prototxt", "-o", tmp_path / "other.caffemodel", "--seed", 8, "-q")
    assert (tmp_path / "again.caffemodel").read_bytes() == (d / "w.caffemodel").read_bytes()
    other = load_weights(tmp_path / "other.caffemodel")
    assert not np.array_equal(other["xavier"][0], w["xavier"][0])
    np.testing.assert_array_equal(other["up"][0], w["up"][0])  # bilinear draws nothing
    lib = init_weights(Net.from_prototxt(d / "net.prototxt"), 7)
    for name, arrays in lib.blobs.items():
        for a, b in zip(arrays, w[name], strict=True):
            np.testing.assert_array_equal(a, b)


def test_opencv_reads_the_file(tmp_path):
    import cv2

    res = run("init-weights", sample("lenet_deploy.prototxt"), "-o", tmp_path / "lenet.caffemodel", "--seed", 1)
    assert res.exit_code == 0, res.output
    net = cv2.dnn.readNetFromCaffe(str(sample("lenet_deploy.prototxt")), str(tmp_path / "lenet.caffemodel"))
    ours = load_weights(tmp_path / "lenet.caffemodel")
    conv1 = net.getParam(net.getLayerId("conv1"), 0)
    np.testing.assert_array_equal(conv1, ours["conv1"][0])
    net.setInput(np.zeros((1, 1, 28, 28), np.float32))
    assert net.forward().shape == (1, 10)


def test_a_bad_filler_is_one_line(tmp_path):
    (tmp_path / "bad.prototxt").write_text(NET.replace('type: "bilinear"', 'type: "nonsense"'))
    res = run("init-weights", tmp_path / "bad.prototxt", "-o", tmp_path / "w.caffemodel")
    assert res.exit_code == 1 and len(res.output.splitlines()) == 1
    assert "unknown filler type 'nonsense'" in res.output and "layer 'up'" in res.output
