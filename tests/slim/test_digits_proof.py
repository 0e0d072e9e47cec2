"""The slimming proof on a LeNet-style BatchNorm net trained by the training engine on scikit-learn's
digits (tests/slim/digits_bn.py): fold-bn exact, int8 within 1 point and fp16 within 0.5 point of
float accuracy, structured pruning's counts equal `param-count`, decompose's error measured honestly."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from dnntool.cli import cli
from dnntool.io.caffemodel import load_weights
from dnntool.net import Net
from dnntool.net.weights import layer_arrays
from dnntool.slim.batches import db_batches
from dnntool.slim.compare import compare
from dnntool.slim.decompose import decompose_files
from dnntool.slim.fold_bn import fold_bn_files
from dnntool.slim.prune import accuracy_metric, prune_files, score
from dnntool.slim.quantize import quantize_files
from tests.engine.oracle import has_opencv_caffe, run_ours
from tests.slim import nets


@pytest.fixture(scope="module")
def float_accuracy(digits_bn) -> float:
    net = Net.from_prototxt(digits_bn.net, "test")
    acc = score(net, str(digits_bn.weights), 4, accuracy_metric(net), "cpu")
    assert acc >= 0.9, f"the trained net scores only {acc}"
    return acc


def test_fold_bn_is_exact(tmp_path, digits_bn, float_accuracy):
    rep = fold_bn_files(digits_bn.net, digits_bn.weights, tmp_path / "f", batches=4, db=str(digits_bn.test_db))
    assert rep.extra["folded"] == 3 and rep.extra["kept"] == [] and rep.after.stored == 0
    assert rep.output_diff["ip2"].max_rel <= 1e-4
    res = compare([digits_bn.net, digits_bn.weights], [tmp_path / "f.prototxt", tmp_path / "f.caffemodel"],
                  db=str(digits_bn.test_db), batches=4)
    assert {r.name for r in res.rows} >= {"conv1", "scale2", "pool2", "ip1", "ip2", "accuracy"}
    assert all(r.diff.max_rel <= 1e-4 for r in res.rows)
    folded = Net.from_prototxt(tmp_path / "f.prototxt", "test")
    assert score(folded, str(tmp_path / "f.caffemodel"), 4, "accuracy", "cpu") == float_accuracy


@pytest.mark.skipif(not has_opencv_caffe(), reason="OpenCV's Caffe importer is not available")
def test_opencv_runs_the_folded_deploy_net(tmp_path, digits_bn):
    import cv2

    text = digits_bn.net.read_text()
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(nets.input_layer((8, 1, 28, 28))
                      + text[text.index('layer { name: "conv1"'):text.index('layer { name: "accuracy"')])
    fold_bn_files(deploy, digits_bn.weights, tmp_path / "f", batches=0)
    x = db_batches(Net.from_prototxt(digits_bn.net, "test"), 1)[0]["data"][:8]
    net = Net.from_prototxt(deploy, "test")
    ref = run_ours(net, layer_arrays(net, load_weights(digits_bn.weights)), {"data": x}, ["ip2"])["ip2"]
    cv = cv2.dnn.readNetFromCaffe(str(tmp_path / "f.prototxt"), str(tmp_path / "f.caffemodel"))
    cv.setInput(x, "data")
    got = cv.forward("ip2")
    assert np.abs(got - ref).max() / np.abs(ref).max() <= 1e-4


@pytest.mark.parametrize(("dtype", "points"), [("int8", 1.0), ("fp16", 0.5)])
def test_quantized_accuracy_is_close_to_float(tmp_path, digits_bn, float_accuracy, dtype, points):
    calib = {"calib_db": str(digits_bn.train_db), "calib_batches": 10} if dtype == "int8" else {}
    rep = quantize_files(digits_bn.net, digits_bn.weights, tmp_path / f"{dtype}.onnx", dtype,
                         test_db=str(digits_bn.test_db), batches=1, **calib)
    row = next(r for r in rep.rows if r[0] == "accuracy")
    assert row[1] == pytest.approx(float_accuracy)
    assert abs(row[2] - row[1]) * 100 <= points, f"{dtype}: {row[2]} vs float {row[1]}"


def test_structured_pruning_counts_equal_param_count(tmp_path, digits_bn):
    rep = prune_files(digits_bn.net, digits_bn.weights, tmp_path / "p", structured=True, ratio=0.25,
                      layers=["conv1", "conv2", "ip1"], batches=1)
    out = [str(tmp_path / "p.prototxt"), "--weights", str(tmp_path / "p.caffemodel"), "--format", "json"]
    pc = json.loads(CliRunner().invoke(cli, ["param-count", *out]).output)["totals"]
    fl = json.loads(CliRunner().invoke(cli, ["flops", str(tmp_path / "p.prototxt"), "--format", "json"]).output)
    assert (pc["params"], pc["stored"], fl["totals"]["macs"]) == (rep.after.params, rep.after.stored, rep.after.macs)
    assert rep.after.params < 0.7 * rep.before.params
    assert {r[0]: r[2] for r in rep.rows if r[2]} == {"conv1": "16 -> 12", "conv2": "32 -> 24", "ip1": "64 -> 48"}


def test_decompose_reports_the_measured_error(tmp_path, digits_bn):
    rep = decompose_files(digits_bn.net, digits_bn.weights, tmp_path / "d", ["ip1"], rank=8, batches=2,
                          db=str(digits_bn.test_db))
    row = dict(zip(rep.columns, rep.rows[0], strict=True))
    assert row["rank"] == 8 and row["params after"] == 8 * (512 + 64) + 64
    # the same error measured independently, on the same batches, at ip1's final value
    batches = db_batches(Net.from_prototxt(digits_bn.net, "test"), 2, str(digits_bn.test_db))
    a, b = Net.from_prototxt(digits_bn.net, "test"), Net.from_prototxt(tmp_path / "d.prototxt", "test")
    wa = layer_arrays(a, load_weights(digits_bn.weights))
    wb = layer_arrays(b, load_weights(tmp_path / "d.caffemodel"))
    ya = np.concatenate([run_ours(a, wa, {"data": x["data"]}, ["ip1"])["ip1"] for x in batches])
    yb = np.concatenate([run_ours(b, wb, {"data": x["data"]}, ["ip1"])["ip1"] for x in batches])
    assert row["top max rel error"] == pytest.approx(np.abs(ya - yb).max() / np.abs(ya).max(), rel=1e-3)
    assert row["top max rel error"] > 0 and 0 < row["weight error"] < 1
