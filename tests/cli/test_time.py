"""``dnntool time``: per-layer forward/backward times from ONNX Runtime's profiler."""

from __future__ import annotations

import json

from click.testing import CliRunner

from dnntool.cli import cli
from dnntool.samples import sample
from dnntool.train.timing import OTHER, layer_of
from tests.train.nets import CONV_NET

NET = CONV_NET % {"train": "absent_lmdb", "test": "absent_lmdb"}
SHAPES = ["--input-shape", "data=4,1,6,6", "--input-shape", "label=4"]


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


def test_layer_of_maps_scoped_node_names():
    layers = ["conv", "inception_3a/1x1", "inception_3a"]
    assert layer_of("conv/Conv", layers) == ("conv", False)
    assert layer_of("conv/grad/ConvTranspose_2", layers) == ("conv", True)
    assert layer_of("inception_3a/1x1/grad/Conv", layers) == ("inception_3a/1x1", True)
    assert layer_of("inception_3a/Concat", layers) == ("inception_3a", False)
    assert layer_of("fused conv/Conv", layers) == ("conv", False)
    assert layer_of("Identity_3", layers) == (OTHER, False)


def test_time_table(tmp_path):
    net = tmp_path / "net.prototxt"
    net.write_text(NET)
    res = invoke("time", "--model", str(net), "--iterations", "3", "--device", "cpu", *SHAPES)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == "small: TRAIN phase, 3 iterations on CPUExecutionProvider"
    assert lines[1].split() == ["layer", "type", "forward", "ms", "backward", "ms"]
    rows = {ln.split()[0]: ln.split() for ln in lines[2:] if len(ln.split()) == 4}
    assert rows["conv"][1] == "Convolution" and float(rows["conv"][2]) > 0 and float(rows["conv"][3]) > 0
    assert float(rows["ip"][3]) > 0
    assert any(ln.startswith("Average Forward-Backward: ") for ln in lines)
    assert "Slowest kernels" in res.output and "conv/grad/" in res.output


def test_time_json_and_test_phase(tmp_path):
    net = tmp_path / "net.prototxt"
    net.write_text(NET)
    data = json.loads(invoke("time", "--model", str(net), "--iterations", "2", "--json", *SHAPES).output)
    assert data["phase"] == "train" and data["iterations"] == 2
    assert data["forward_ms"] > 0 and data["backward_ms"] > 0 and data["wall_ms"] > 0
    assert {t["name"] for t in data["layers"]} >= {"conv", "relu", "ip", "loss"}
    assert len(data["nodes"]) <= 10 and data["nodes"][0]["ms"] >= data["nodes"][-1]["ms"]
    test = json.loads(invoke("time", "--model", str(net), "--phase", "test", "--json", "--iterations", "2",
                             *SHAPES).output)
    assert test["backward_ms"] == 0 and "acc" in {t["name"] for t in test["layers"]}


def test_time_train_phase_needs_a_loss():
    res = invoke("time", "--model", str(sample("lenet_deploy.prototxt")), "--iterations", "1")
    assert res.exit_code == 1
    assert res.output.strip() == "Error: net 'LeNet' has no loss (no top with a loss_weight) to train"
