"""The README's Python examples run as written, each in a folder holding the files it names (made
from the shipped samples) and the arrays it uses."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dnntool.cli import cli
from dnntool.samples import sample

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)

NET = """name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 20 dim: 1 dim: 8 dim: 8 } shape { dim: 20 } } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "ip1" bottom: "label" top: "accuracy" include { phase: TEST } }
"""
SOLVER = """net: "net.prototxt"
test_iter: 1
test_interval: 10
base_lr: 0.1
display: 5
max_iter: 10
snapshot_prefix: "tiny"
random_seed: 1
"""


def prepare(code: str, folder: Path) -> dict:
    """Write the files the block names; return the variables it expects to exist."""
    names: dict = {}
    if "ResNet-50-deploy.prototxt" in code:
        shutil.copy(sample("small_resnet_v1.prototxt"), folder / "ResNet-50-deploy.prototxt")
        res = CliRunner().invoke(cli, ["init-weights", str(folder / "ResNet-50-deploy.prototxt"), "-o",
                                       str(folder / "model.caffemodel")])
        assert res.exit_code == 0, res.output
    if '"solver.prototxt"' in code:
        (folder / "net.prototxt").write_text(NET)
        (folder / "solver.prototxt").write_text(SOLVER)
        rng = np.random.default_rng(0)
        for x, y in (("x", "y"), ("x_val", "y_val")):
            names[y] = rng.integers(0, 10, 60).astype(np.float32)
            names[x] = (rng.normal(size=(60, 1, 8, 8)) + names[y][:, None, None, None]).astype(np.float32)
    return names


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_python_block_runs(code, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme", **prepare(code, tmp_path)}
    exec(compile(code, f"README.md python block in {tmp_path}", "exec"), namespace)
    if "res" in namespace and hasattr(namespace["res"], "tests"):
        assert [o.name for o in namespace["res"].tests[-1].outputs] == ["accuracy", "loss"]
