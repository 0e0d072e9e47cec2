"""``dnntool featuremap-dump``: mosaics, .npy / LMDB features keyed by source, preprocessing, errors."""

from __future__ import annotations

import json

import cv2
import lmdb
import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from dnntool.cli import cli
from dnntool.data.sources import datum_array
from dnntool.io.caffemodel import load_weights
from dnntool.net import Net
from dnntool.net.weights import layer_arrays
from dnntool.samples import sample
from dnntool.tools.featuremaps import mosaic, safe_name
from dnntool.translate.forward import to_onnx
from tests.data.digits import digits, key, write_lmdb

LENET = sample("lenet_deploy.prototxt")

SMALL = """
name: "small"
layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 16 dim: 1 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 6 kernel_size: 3 weight_filler { type: "msra" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc/out" type: "InnerProduct" bottom: "conv1" top: "fc/out"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
"""


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def reference(net_path, weights, x, outputs, input_shape=None):
    """The blobs of ``outputs`` for input ``x`` through a plain translation of the same net."""
    net = Net.from_prototxt(net_path, input_shapes={"data": input_shape or x.shape})
    tr = to_onnx(net, layer_arrays(net, load_weights(weights)), outputs=outputs)
    sess = ort.InferenceSession(tr.model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(outputs, sess.run(None, {"data": x}), strict=True))


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    d = tmp_path_factory.mktemp("fmap")
    assert run("init-weights", LENET, "-o", d / "lenet.caffemodel", "--seed", 2).exit_code == 0
    x, _ = digits(3)
    paths = []
    for i in range(3):
        paths.append(d / f"digit_{i}.png")
        cv2.imwrite(str(paths[-1]), x[i, 0])
    return d, paths


def test_mosaic_layout_and_scaling():
    x = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)
    x[4] = 7  # a constant channel is drawn black
    img = mosaic(x)
    assert img.shape == (2 * 3 - 1, 3 * 4 - 1) and img.dtype == np.uint8  # 3 columns (ceil sqrt 5), 2 rows
    tile = np.array([[0, 51, 102], [153, 204, 255]], np.uint8)
    for c in range(4):
        r, q = divmod(c, 3)
        np.testing.assert_array_equal(img[r * 3:r * 3 + 2, q * 4:q * 4 + 3], tile)
    np.testing.assert_array_equal(img[3:5, 4:7], 0)
    assert (img[2, :] == 255).all() and (img[:, 3] == 255).all()  # 1-pixel white separators
    assert (img[3:5, 8:11] == 255).all()  # the unused sixth cell
    strip = mosaic(np.array([0.0, 1.0, 2.0], np.float32))
    np.testing.assert_array_equal(strip, np.tile(np.array([0, 127, 255], np.uint8), (8, 1)))
    assert mosaic(np.float32(3)) is None
    assert mosaic(np.ones((4, 1, 1), np.float32)).shape == (8, 4)  # 1x1 maps: a strip


def test_safe_names_are_unique():
    taken: set[str] = set()
    assert [safe_name(n, taken) for n in ("inception_3a/1x1", "inception_3a_1x1", "a b", "..")] == [
        "inception_3a_1x1", "inception_3a_1x1_2", "a_b", "blob"]


def test_images_every_blob(lenet, tmp_path):
    d, paths = lenet
    res = run("featuremap-dump", "--model", LENET, "--weights", d / "lenet.caffemodel",
              *[a for p in paths for a in ("--image", p)], "--scale", 0.00390625, "--out", tmp_path / "out",
              "--input-shape", "data=2,1,28,28", "--device", "cpu")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == f"3 samples in 2 batch(es) of 2 on CPUExecutionProvider: 7 blobs -> {tmp_path / 'out'}"
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["keys"] == [str(p) for p in paths]
    assert [b["name"] for b in index["blobs"]] == ["conv1", "pool1", "conv2", "pool2", "ip1", "ip2", "prob"]
    assert (tmp_path / "out" / "keys.txt").read_text().splitlines() == [str(p) for p in paths]

    x = np.stack([cv2.resize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), (28, 28)) for p in paths])[:, None]
    x = x.astype(np.float32) * np.float32(0.00390625)
    names = [b["name"] for b in index["blobs"]]
    ref = reference(LENET, d / "lenet.caffemodel", x, names)
    for b in index["blobs"]:
        got = np.load(tmp_path / "out" / b["data"])
        assert got.shape == (3, *b["shape"])
        np.testing.assert_allclose(got, ref[b["name"]], rtol=1e-5, atol=1e-6)
        assert b["stats"]["min"] == pytest.approx(float(ref[b["name"]].min()), abs=1e-6)
    assert (np.load(tmp_path / "out" / "ip1.npy") >= 0).all()  # ip1 after the in-place relu1, as Caffe's net.blobs
    png = cv2.imread(str(tmp_path / "out" / "conv1.png"), cv2.IMREAD_UNCHANGED)
    assert png.shape == (4 * 25 - 1, 5 * 25 - 1)  # 20 channels of 24x24: 5 columns, 4 rows
    np.testing.assert_array_equal(png, mosaic(np.load(tmp_path / "out" / "conv1.npy")[0]))
    assert cv2.imread(str(tmp_path / "out" / "prob.png"), cv2.IMREAD_UNCHANGED).shape == (8, 10)


def test_selected_blobs_and_the_input(lenet, tmp_path):
    d, paths = lenet
    res = run("featuremap-dump", "--model", LENET, "--weights", d / "lenet.caffemodel", "--image", paths[0],
              "--blobs", "data,pool2", "--mean", "10", "--out", tmp_path / "out", "-q")
    assert res.exit_code == 0, res.output
    assert res.output == ""
    data = np.load(tmp_path / "out" / "data.npy")
    img = cv2.resize(cv2.imread(str(paths[0]), cv2.IMREAD_GRAYSCALE), (28, 28)).astype(np.float32)
    np.testing.assert_array_equal(data, (img - 10)[None, None])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "data.npy", "data.png", "index.json", "keys.txt", "pool2.npy", "pool2.png"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("fmapdb")
    (d / "small.prototxt").write_text(SMALL)
    assert run("init-weights", d / "small.prototxt", "-o", d / "small.caffemodel").exit_code == 0
    x, y = digits(30)
    write_lmdb(d / "db", x, y)
    return d, x


def test_db_to_lmdb_keyed_by_source(small, tmp_path):
    d, x = small
    res = run("featuremap-dump", "--model", d / "small.prototxt", "--weights", d / "small.caffemodel",
              "--db", d / "db", "--blobs", "conv1,fc/out", "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[0].startswith("30 samples in 2 batch(es) of 16 on ")
    ref = reference(d / "small.prototxt", d / "small.caffemodel", x.astype(np.float32), ["conv1", "fc/out"])
    for name, stem, chw in (("conv1", "conv1", (6, 6, 6)), ("fc/out", "fc_out", (10, 1, 1))):
        env = lmdb.open(str(tmp_path / "out" / f"{stem}.lmdb"), readonly=True, lock=False)
        with env.begin() as txn:
            items = list(txn.cursor())
        env.close()
        assert [k.decode() for k, _ in items] == [key(i) for i in range(30)]
        for i, (k, v) in enumerate(items):
            arr, label = datum_array(v, k.decode())
            assert arr.shape == chw and arr.dtype == np.float32 and label == 0
            np.testing.assert_allclose(arr.reshape(-1), ref[name][i].reshape(-1), rtol=1e-5, atol=1e-6)


def test_db_to_npy_wraps_like_extract_features(small, tmp_path):
    d, x = small
    res = run("featuremap-dump", "--model", d / "small.prototxt", "--weights", d / "small.caffemodel",
              "--db", d / "db", "--num-batches", 3, "--blobs", "fc/out", "--db-format", "npy", "--no-png",
              "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    got = np.load(tmp_path / "out" / "fc_out.npy")
    assert got.shape == (48, 10)
    idx = np.arange(48) % 30
    ref = reference(d / "small.prototxt", d / "small.caffemodel", x[idx].astype(np.float32), ["fc/out"],
                    (48, 1, 8, 8))["fc/out"]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    keys = (tmp_path / "out" / "keys.txt").read_text().splitlines()
    assert keys == [key(int(i)) for i in idx]
    assert not (tmp_path / "out" / "fc_out.png").exists()


def test_preprocessing_resize_crop_rgb_and_mean(tmp_path):
    net = tmp_path / "rgb.prototxt"
    net.write_text('layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 6 dim: 6 } } }\n'
                   'layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: MAX kernel_size: 2 } }\n')
    assert run("init-weights", net, "-o", tmp_path / "w.caffemodel").exit_code == 0
    img = np.random.default_rng(3).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "im.png"), img)
    res = run("featuremap-dump", "--model", net, "--weights", tmp_path / "w.caffemodel", "--image", tmp_path / "im.png",
              "--blobs", "data", "--resize", "8,8", "--channel-order", "rgb", "--mean", "1,2,3", "--scale", 2,
              "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    r = cv2.resize(img, (8, 8))[1:7, 1:7, ::-1].transpose(2, 0, 1).astype(np.float32)  # centre crop, RGB
    expect = (r - np.array([1, 2, 3], np.float32).reshape(3, 1, 1)) * 2
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "data.npy")[0], expect)


def test_the_nets_transform_param_is_used(small, tmp_path):
    d, x = small
    net = tmp_path / "data.prototxt"
    net.write_text(f'layer {{ name: "d" type: "Data" top: "data" top: "label"\n'
                   f'  transform_param {{ mean_value: 10 scale: 0.5 crop_size: 6 }}\n'
                   f'  data_param {{ source: "{d / "db"}" batch_size: 4 backend: LMDB }} }}\n'
                   'layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: MAX kernel_size: 2 } }\n')
    assert run("init-weights", net, "-o", tmp_path / "w.caffemodel").exit_code == 0
    res = run("featuremap-dump", "--model", net, "--weights", tmp_path / "w.caffemodel", "--db", d / "db",
              "--blobs", "data", "--db-format", "npy", "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "data.npy"),
                                  (x[:, :, 1:7, 1:7].astype(np.float32) - 10) * 0.5)


def test_errors(lenet, tmp_path):
    d, paths = lenet
    base = ["featuremap-dump", "--model", LENET, "--weights", d / "lenet.caffemodel", "--out", tmp_path / "o"]
    res = run(*base, "--image", paths[0], "--blobs", "conv9")
    assert res.exit_code == 1
    assert res.output.splitlines() == [
        "Error: no blob named 'conv9' in net 'LeNet' (blobs: data, conv1, pool1, conv2, pool2, ip1, ip2, prob)"]
    res = run(*base, "--image", tmp_path / "none.png")
    assert res.exit_code == 1 and res.output == f"Error: {tmp_path / 'none.png'}: image cannot be read (missing or not an image)\n"
    res = run(*base, "--image", paths[0], "--db", tmp_path)
    assert res.exit_code == 2
    res = run(*base)
    assert res.exit_code == 2
    res = run(*base, "--image", paths[0], "--resize", "0,3")
    assert res.exit_code == 2
    np.save(tmp_path / "mean.npy", np.zeros((1, 30, 30), np.float32))
    res = run(*base, "--image", paths[0], "--mean", tmp_path / "mean.npy", "--resize", "28,28")
    assert res.exit_code == 2 and "the mean is 30x30 but records are resized to 28x28" in res.output


@pytest.mark.parametrize("fmt", ["lmdb", "npy"])
def test_a_failed_dump_leaves_the_previous_one_intact(small, tmp_path, monkeypatch, fmt):
    """Every file is staged under a temporary name and renamed into place only when the whole dump
    succeeded: an interrupted rerun leaves no partial file and the earlier dump as it was."""
    from dnntool.tools import featuremaps

    d, _ = small
    args = ["featuremap-dump", "--model", d / "small.prototxt", "--weights", d / "small.caffemodel", "--db",
            d / "db", "--blobs", "conv1,fc/out", "--db-format", fmt, "--out", tmp_path / "out"]
    assert run(*args).exit_code == 0
    before = {p.relative_to(tmp_path): p.read_bytes() for p in sorted((tmp_path / "out").rglob("*")) if p.is_file()}
    calls = []

    def interrupted(self, x):
        calls.append(1)
        if len(calls) == 3:  # the second batch
            raise KeyboardInterrupt

    monkeypatch.setattr(featuremaps._Stats, "add", interrupted)
    assert run(*args).exit_code == 130
    after = {p.relative_to(tmp_path): p.read_bytes() for p in sorted((tmp_path / "out").rglob("*")) if p.is_file()}
    assert after == before
    monkeypatch.undo()
    assert run(*args[:-2], "--num-batches", 1, "--out", tmp_path / "out").exit_code == 0  # replaces the set
    assert len(json.loads((tmp_path / "out" / "index.json").read_text())["keys"]) == 16
    assert not [p for p in (tmp_path / "out").iterdir() if ".tmp-" in p.name]
