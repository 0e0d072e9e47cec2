"""``dnntool test``: Caffe's summary lines on an LMDB of scikit-learn digits, checked against numpy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from dnntool.cli import COMMANDS, cli
from dnntool.io.caffemodel import save_caffemodel
from dnntool.io.prototxt import read_net
from dnntool.tools.evaluate import fmt
from tests.data.digits import centroid_weights, classifier_net, digits, lenet_like, write_lmdb

N, BATCH, ITERS = 300, 50, 8  # 8 batches of 50 over 300 records: the last two wrap around


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def expected(x: np.ndarray, y: np.ndarray, w: list[np.ndarray], scale: float, iters: int,
             mean: np.ndarray | float = 0.0) -> tuple[float, float]:
    """Mean accuracy and SoftmaxWithLoss over ``iters`` batches read in order with wrap-around."""
    idx = np.arange(iters * BATCH) % len(x)
    feats = (x[idx].astype(np.float64) - mean).reshape(len(idx), -1) * scale
    logits = feats @ w[0].astype(np.float64).T + w[1]
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    right = (logits.argmax(axis=1) == y[idx]).reshape(iters, BATCH).mean(axis=1)
    nll = -np.log(p[np.arange(len(idx)), y[idx]]).reshape(iters, BATCH).mean(axis=1)
    return float(right.mean()), float(nll.mean())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("evaluate")
    x, y = digits(N)
    write_lmdb(d / "digits_lmdb", x, y)
    net = d / "net.prototxt"
    net.write_text(classifier_net(str(d / "digits_lmdb"), BATCH))
    w = centroid_weights(x, y)
    save_caffemodel(d / "w.caffemodel", list(read_net(net).param.layer), {"ip": w})
    return d, x, y, w


def test_prints_caffe_test_summary(setup):
    d, x, y, w = setup
    res = run("test", "--model", d / "net.prototxt", "--weights", d / "w.caffemodel", "--iterations", ITERS,
              "--device", "cpu")
    assert res.exit_code == 0, res.output
    acc, loss = expected(x, y, w, 0.0625, ITERS)
    lines = res.output.splitlines()
    assert lines[0] == f"Running for {ITERS} iterations of batch {BATCH} ({ITERS * BATCH} images) on CPUExecutionProvider."
    assert lines[2] == f"accuracy = {fmt(acc)}"
    assert 0.8 < acc < 1.0  # a real classifier, so the exact check means something
    got_loss = float(lines[1].removeprefix("Loss: "))
    assert got_loss == pytest.approx(loss, rel=1e-5)
    assert lines[3] == f"loss = {lines[1][6:]} (* 1 = {lines[1][6:]} loss)"
    assert len(lines) == 4


def test_json_gives_the_same_numbers(setup):
    d, x, y, w = setup
    text = run("test", "--model", d / "net.prototxt", "--weights", d / "w.caffemodel", "--iterations", ITERS)
    res = run("test", "--model", d / "net.prototxt", "--weights", d / "w.caffemodel", "--iterations", ITERS, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    acc, loss = expected(x, y, w, 0.0625, ITERS)
    assert out["iterations"] == ITERS and out["batch_size"] == BATCH and out["images"] == ITERS * BATCH
    assert out["provider"] in ("CPUExecutionProvider", "CUDAExecutionProvider")
    assert [o["name"] for o in out["outputs"]] == ["accuracy", "loss"]
    assert out["outputs"][0]["value"] == pytest.approx(acc, abs=1e-7)
    assert out["outputs"][0]["loss_weight"] == 0
    assert out["outputs"][1] == {"name": "loss", "value": out["loss"], "loss_weight": 1.0, "weighted_loss": out["loss"]}
    assert out["loss"] == pytest.approx(loss, rel=1e-5)
    assert text.output.splitlines()[1] == f"Loss: {fmt(out['loss'])}"


def test_verbose_prints_each_batch(setup):
    d, *_ = setup
    res = run("test", "--model", d / "net.prototxt", "--weights", d / "w.caffemodel", "--iterations", 2, "-v")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith("Running for 2 iterations")
    assert [ln.split(" = ")[0] for ln in lines[1:5]] == [
        "Batch 0, accuracy", "Batch 0, loss", "Batch 1, accuracy", "Batch 1, loss"]


def test_onnx_model_with_data_gives_the_same_numbers(setup, tmp_path):
    d, *_ = setup
    base = run("test", "--model", d / "net.prototxt", "--weights", d / "w.caffemodel", "--iterations", ITERS)
    res = run("export-onnx", d / "net.prototxt", "--weights", d / "w.caffemodel", "-o", tmp_path / "m.onnx")
    assert res.exit_code == 0, res.output
    res = run("test", "--model", tmp_path / "m.onnx", "--data", d / "net.prototxt", "--iterations", ITERS)
    assert res.exit_code == 0, res.output
    assert res.output == base.output

    # a model that lost dnntool's metadata (e.g. rewritten by a quantizer): names and loss weights
    # come from the --data prototxt
    import onnx

    m = onnx.load(tmp_path / "m.onnx")
    del m.metadata_props[:]
    onnx.save(m, tmp_path / "bare.onnx")
    res = run("test", "--model", tmp_path / "bare.onnx", "--data", d / "net.prototxt", "--iterations", ITERS)
    assert res.exit_code == 0, res.output
    assert res.output == base.output


def test_onnx_inputs_must_be_data_tops(setup, tmp_path):
    d, *_ = setup
    import onnx

    run("export-onnx", d / "net.prototxt", "--weights", d / "w.caffemodel", "-o", tmp_path / "m.onnx")
    m = onnx.load(tmp_path / "m.onnx")
    for node in m.graph.node:
        node.input[:] = ["pixels" if i == "data" else i for i in node.input]
    m.graph.input[0].name = "pixels"
    onnx.save(m, tmp_path / "renamed.onnx")
    res = run("test", "--model", tmp_path / "renamed.onnx", "--data", d / "net.prototxt")
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [
        f"Error: {tmp_path / 'renamed.onnx'}: ONNX input 'pixels' is not a top of a data layer in"
        f" {d / 'net.prototxt'} (its data tops: data, label)"]


def test_missing_weights_blob_is_one_line_naming_the_layer(setup, tmp_path):
    d, *_ = setup
    save_caffemodel(tmp_path / "empty.caffemodel", list(read_net(d / "net.prototxt").param.layer), {})
    res = run("test", "--model", d / "net.prototxt", "--weights", tmp_path / "empty.caffemodel")
    assert res.exit_code == 1
    assert res.output.splitlines() == [
        "Error: layer 'ip' (InnerProduct) has 2 parameter blob(s) in the prototxt but none in the caffemodel"]
    bad = [np.zeros((10, 63), np.float32), np.zeros(10, np.float32)]
    save_caffemodel(tmp_path / "bad.caffemodel", list(read_net(d / "net.prototxt").param.layer), {"ip": bad})
    res = run("test", "--model", d / "net.prototxt", "--weights", tmp_path / "bad.caffemodel")
    assert res.exit_code == 1
    assert res.output.splitlines() == [
        "Error: layer 'ip' (InnerProduct) weights: the caffemodel has shape 10x63, the prototxt gives 10x64"]


def test_usage_errors(setup, tmp_path):
    d, *_ = setup
    res = run("test", "--model", d / "net.prototxt")
    assert res.exit_code == 2 and "needs --weights" in res.output
    res = run("test", "--model", tmp_path / "m.onnx")
    assert res.exit_code == 2 and "needs --data" in res.output
    res = run("test", "--model", d / "net.prototxt", "--weights", d / "w.caffemodel", "--device", "tpu")
    assert res.exit_code == 2 and "invalid device 'tpu'" in res.output
    res = run("test", "--model", d / "net.prototxt", "--weights", d / "w.caffemodel", "--iterations", 0)
    assert res.exit_code == 2


def test_cuda_without_a_gpu_is_a_clear_error(setup):
    from dnntool.onnxgraph.runtime import _gpu_present, available_providers

    if "CUDAExecutionProvider" in available_providers() and _gpu_present():
        pytest.skip("a GPU is present")
    d, *_ = setup
    res = run("test", "--model", d / "net.prototxt", "--weights", d / "w.caffemodel", "--device", "cuda")
    assert res.exit_code == 1 and res.output.startswith("Error: --device cuda: ")


def test_conv_net_with_init_weights(setup, tmp_path):
    d, *_ = setup
    net = tmp_path / "lenet.prototxt"
    net.write_text(lenet_like(str(d / "digits_lmdb"), 25))
    assert run("init-weights", net, "-o", tmp_path / "init.caffemodel", "--seed", 3).exit_code == 0
    res = run("test", "--model", net, "--weights", tmp_path / "init.caffemodel", "--iterations", 3, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["batch_size"] == 25 and 0 <= out["outputs"][0]["value"] <= 1
    assert np.isfinite(out["loss"]) and out["loss"] > 0


def test_image_data_layer(setup, tmp_path):
    import cv2

    d, x, y, w = setup
    for i in range(20):
        cv2.imwrite(str(tmp_path / f"{i}.png"), x[i, 0])
    (tmp_path / "list.txt").write_text("".join(f"{i}.png {y[i]}\n" for i in range(20)))
    net = classifier_net("x", 10).replace('type: "Data"', 'type: "ImageData"').replace(
        'data_param { source: "x" batch_size: 10 backend: LMDB }',
        f'image_data_param {{ source: "list.txt" root_folder: "{tmp_path}/" batch_size: 10 is_color: false }}')
    (tmp_path / "img.prototxt").write_text(net)
    res = run("test", "--model", tmp_path / "img.prototxt", "--weights", d / "w.caffemodel", "--iterations", 2,
              "--json")
    assert res.exit_code == 0, res.output
    idx = np.arange(20)
    logits = x[idx].reshape(20, -1) * 0.0625 @ w[0].T + w[1]
    assert json.loads(res.output)["outputs"][0]["value"] == pytest.approx(
        float((logits.argmax(1) == y[idx]).mean()), abs=1e-7)


@pytest.mark.skipif(not {"convert-images", "compute-image-mean"} <= set(COMMANDS),
                    reason="convert-images / compute-image-mean are not registered yet")
def test_end_to_end_with_convert_images_and_compute_image_mean(tmp_path):
    """images + list -> convert-images -> LMDB -> compute-image-mean -> mean.binaryproto -> test."""
    import cv2

    from dnntool.io.blob import read_binaryproto

    x, y = digits(200)
    (tmp_path / "img").mkdir()
    for i in range(200):
        cv2.imwrite(str(tmp_path / "img" / f"digit {i}.png"), x[i, 0])
    (tmp_path / "list.txt").write_text("".join(f"digit {i}.png {y[i]}\n" for i in range(200)))
    res = run("convert-images", tmp_path / "img", tmp_path / "list.txt", tmp_path / "db", "--gray", "-j", "1", "-q")
    assert res.exit_code == 0, res.output
    res = run("compute-image-mean", tmp_path / "db", tmp_path / "mean.binaryproto", "-j", "1", "-q")
    assert res.exit_code == 0, res.output
    mean = read_binaryproto(tmp_path / "mean.binaryproto").reshape(1, 8, 8)
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-6)

    scale = 0.0625
    w = centroid_weights(x.astype(np.float64) - mean, y, scale)
    net = tmp_path / "net.prototxt"
    net.write_text(classifier_net(str(tmp_path / "db"), BATCH,
                                  f'mean_file: "{tmp_path / "mean.binaryproto"}" scale: {scale}'))
    save_caffemodel(tmp_path / "w.caffemodel", list(read_net(net).param.layer), {"ip": w})
    res = run("test", "--model", net, "--weights", tmp_path / "w.caffemodel", "--iterations", 4)
    assert res.exit_code == 0, res.output
    acc, loss = expected(x, y, w, scale, 4, mean=mean.astype(np.float32))
    lines = res.output.splitlines()
    assert lines[2] == f"accuracy = {fmt(acc)}" and acc > 0.8
    assert float(lines[1].removeprefix("Loss: ")) == pytest.approx(loss, rel=1e-5)
