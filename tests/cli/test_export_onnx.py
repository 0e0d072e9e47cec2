"""``dnntool export-onnx``: checked, runnable models that match the translator (and OpenCV on a V1 file)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from dnntool.cli import cli
from dnntool.io.caffemodel import load_weights, save_caffemodel
from dnntool.io.prototxt import read_net
from dnntool.net import Net
from dnntool.net.weights import layer_arrays
from dnntool.samples import sample
from dnntool.translate.forward import to_onnx
from tests.zoo import zoo_dir

LENET = sample("lenet_deploy.prototxt")


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "lenet.caffemodel"
    assert run("init-weights", LENET, "-o", path, "--seed", 5).exit_code == 0
    return path


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_export_is_checked_runs_and_matches_the_translator(weights, tmp_path):
    res = run("export-onnx", LENET, "--weights", weights, "-o", tmp_path / "m.onnx")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith(f"wrote {tmp_path / 'm.onnx'}: opset 17, ")
    assert lines[1:] == ["  inputs:  data [1x1x28x28]", "  outputs: prob [1x10]"]
    model = onnx.load(tmp_path / "m.onnx")
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert meta["dnntool.outputs"] == [{"output": "prob", "blob": "prob", "loss_weight": 0.0}]
    assert meta["dnntool.inputs"] == [{"input": "data", "layer": "data", "type": "Input"}]

    x = np.random.default_rng(0).uniform(0, 1, (1, 1, 28, 28)).astype(np.float32)
    got = session(tmp_path / "m.onnx").run(None, {"data": x})[0]
    net = Net.from_prototxt(LENET)
    ref_model = to_onnx(net, layer_arrays(net, load_weights(weights))).model
    ref = ort.InferenceSession(ref_model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"data": x})[0]
    np.testing.assert_array_equal(got, ref)
    assert got.shape == (1, 10) and got.sum() == pytest.approx(1, rel=1e-5)


def test_dynamic_batch(weights, tmp_path):
    res = run("export-onnx", LENET, "--weights", weights, "-o", tmp_path / "dyn.onnx", "--dynamic-batch")
    assert res.exit_code == 0, res.output
    assert "data [Nx1x28x28]" in res.output and "prob [Nx10]" in res.output
    sess = session(tmp_path / "dyn.onnx")
    x = np.random.default_rng(1).uniform(0, 1, (3, 1, 28, 28)).astype(np.float32)
    three = sess.run(None, {"data": x})[0]
    singles = np.concatenate([sess.run(None, {"data": x[i:i + 1]})[0] for i in range(3)])
    np.testing.assert_allclose(three, singles, rtol=1e-5, atol=1e-7)


def test_input_shape_and_outputs(weights, tmp_path):
    res = run("export-onnx", LENET, "--weights", weights, "-o", tmp_path / "m.onnx",
              "--input-shape", "data=4,1,28,28", "--outputs", "conv1,pool2")
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[1:] == ["  inputs:  data [4x1x28x28]",
                                           "  outputs: conv1 [4x20x24x24], pool2 [4x50x4x4]"]
    outs = session(tmp_path / "m.onnx").run(None, {"data": np.zeros((4, 1, 28, 28), np.float32)})
    assert [o.shape for o in outs] == [(4, 20, 24, 24), (4, 50, 4, 4)]


def test_missing_or_wrong_weights_name_the_layer(weights, tmp_path):
    layers = list(read_net(LENET).param.layer)
    w = load_weights(weights)
    blobs = {k: v for k, v in w.blobs.items() if k != "ip2"}
    save_caffemodel(tmp_path / "partial.caffemodel", layers, blobs)
    res = run("export-onnx", LENET, "--weights", tmp_path / "partial.caffemodel", "-o", tmp_path / "m.onnx")
    assert res.exit_code == 1
    assert res.output.splitlines() == [
        "Error: layer 'ip2' (InnerProduct) has 2 parameter blob(s) in the prototxt but none in the caffemodel"]
    assert not (tmp_path / "m.onnx").exists()
    blobs["ip2"] = [np.zeros((10, 499), np.float32), np.zeros(10, np.float32)]
    save_caffemodel(tmp_path / "wrong.caffemodel", layers, blobs)
    res = run("export-onnx", LENET, "--weights", tmp_path / "wrong.caffemodel", "-o", tmp_path / "m.onnx")
    assert res.exit_code == 1
    assert res.output.splitlines() == [
        "Error: layer 'ip2' (InnerProduct) weights: the caffemodel has shape 10x499, the prototxt gives 10x500"]


def test_usage(tmp_path):
    res = run("export-onnx", LENET, "-o", tmp_path / "m.onnx")
    assert res.exit_code == 2 and "--weights" in res.output


@pytest.mark.skipif(zoo_dir() is None, reason="the zoo of real Caffe files is absent")
def test_v1_caffemodel_matches_opencv(tmp_path):
    """A 2014 V1 LeNet (prototxt and caffemodel in the old format), against OpenCV's Caffe importer."""
    import cv2

    d = zoo_dir() / "legacy_v1_2014_everpeace" / "examples" / "mnist"
    res = run("export-onnx", d / "lenet.prototxt", "--weights", d / "lenet_iter_10000.caffemodel",
              "-o", tmp_path / "lenet.onnx", "--input-shape", "data=2,1,28,28")
    assert res.exit_code == 0, res.output
    x = np.random.default_rng(2).uniform(0, 1, (2, 1, 28, 28)).astype(np.float32)
    ours = session(tmp_path / "lenet.onnx").run(None, {"data": x})[0]
    cvnet = cv2.dnn.readNetFromCaffe(str(d / "lenet.prototxt"), str(d / "lenet_iter_10000.caffemodel"))
    cvnet.setInput(x)
    theirs = cvnet.forward().reshape(ours.shape)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
