"""The nets and solvers in samples/ load, and their costs are the published ones."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from dnntool.cli import cli
from dnntool.io.prototxt import read_net, read_solver

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
PROTOTXTS = sorted(p.relative_to(SAMPLES).as_posix() for p in SAMPLES.rglob("*.prototxt"))


@pytest.mark.parametrize("name", PROTOTXTS)
def test_sample_loads(name):
    path = SAMPLES / name
    if "solver" in path.name:
        assert read_solver(path).net.endswith("_train_test.prototxt")
    else:
        assert read_net(path).param.layer


@pytest.mark.parametrize(("name", "params"), [
    ("cifar10/cifar10_quick_train_test.prototxt", "145,578"),  # BVLC examples/cifar10
    ("digits/lenet_train_test.prototxt", "431,080"),  # BVLC examples/mnist LeNet
    ("digits/lenet_bn_train_test.prototxt", "431,650"),  # 570 biases fewer, 2 x 570 Scale values more
])
def test_param_counts(name, params):
    shape = ["--input-shape", "data=1,3,32,32" if "cifar" in name else "data=1,1,28,28", "--input-shape", "label=1"]
    res = CliRunner().invoke(cli, ["param-count", str(SAMPLES / name), *shape])
    assert res.exit_code == 0, res.output
    assert f"total learnable params: {params}\n" in res.output
