"""``dnntool demo`` end to end on scikit-learn's digits: every artifact it lists exists and loads,
the trained model scores >= 90% on the held-out digits, and a second run writes the same bytes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import lmdb
import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from dnntool.cli import cli
from dnntool.io.blob import read_binaryproto
from dnntool.io.caffemodel import load_weights, read_solverstate
from dnntool.io.prototxt import read_solver
from dnntool.net import Net

pytest.importorskip("sklearn")

LAYERS = ["conv1", "bn1", "scale1", "pool1", "conv2", "bn2", "pool2", "ip1", "bn3", "ip2", "accuracy", "loss"]


def listed(output: str) -> list[Path]:
    return [Path(line.strip()) for line in output.split("artifacts:")[1].splitlines() if line.strip()]


def timed(value) -> bool:
    """A JSON value holding a measured time (``ms``...), which no second run reproduces."""
    if isinstance(value, dict):
        return any((k.startswith("ms") and v is not None) or timed(v) for k, v in value.items())
    return isinstance(value, list) and any(timed(v) for v in value)


def lmdb_records(path: Path) -> list[tuple[bytes, bytes]]:
    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return list(txn.cursor())
    finally:
        env.close()


def check_loads(path: Path) -> None:
    if path.is_dir() and (path / "data.mdb").exists():
        assert len(lmdb_records(path)) > 0
    elif path.is_dir():  # the digit images
        pngs = sorted(path.rglob("*.png"))
        assert len(pngs) == 1797 and cv2.imread(str(pngs[0]), cv2.IMREAD_GRAYSCALE).shape == (28, 28)
    elif path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix == ".txt":
        root = path.parent / "images"
        lines = path.read_text().splitlines()
        assert lines and all((root / ln.rsplit(" ", 1)[0]).exists() for ln in lines)
    elif path.name.endswith("solver.prototxt"):
        assert read_solver(path).max_iter > 0
    elif path.suffix == ".prototxt":
        assert Net.from_prototxt(path, "test").learnable_count > 0
    elif path.suffix == ".caffemodel":
        assert load_weights(path).blobs
    elif path.suffix == ".solverstate":
        assert read_solverstate(path).iter > 0
    elif path.suffix == ".onnx":
        onnx.checker.check_model(onnx.load(str(path)))
    elif path.suffix == ".binaryproto":
        assert read_binaryproto(path).shape[-2:] == (28, 28)
    elif path.suffix == ".html":
        text = path.read_text()
        assert all(f'"{name}"' in text or f">{name}<" in text for name in LAYERS), path
    elif path.suffix == ".png":
        assert cv2.imread(str(path)) is not None
    elif path.suffix == ".npy":
        assert np.load(path).size > 0
    else:
        raise AssertionError(f"unexpected artifact {path}")


def snapshot(paths: list[Path]) -> dict:
    """What a rerun must reproduce: file bytes, LMDB records, images; timed JSON left out."""
    out = {}
    for p in paths:
        if p.is_dir() and (p / "data.mdb").exists():
            out[p] = lmdb_records(p)
        elif p.is_dir():
            out[p] = {q: q.read_bytes() for q in sorted(p.rglob("*.png"))}
        elif not (p.suffix == ".json" and timed(json.loads(p.read_text()))):
            out[p] = p.read_bytes()
    return out


def test_demo_artifacts_exist_load_and_repeat(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--fast", "--device", "cpu"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    paths = listed(res.output)
    assert len(paths) == len(set(paths)) > 20
    for path in paths:
        assert path.exists(), path
        check_loads(path)

    rows = {m["model"]: m for m in json.loads((out / "summary.json").read_text())["models"]}
    assert set(rows) == {"float", "fold-bn", "pruned", "pruned + fine-tune", "int8", "fp16"}
    for name in ("float", "fold-bn", "pruned + fine-tune", "int8", "fp16"):
        assert rows[name]["accuracy"] >= 0.9, rows[name]
    assert rows["fold-bn"]["accuracy"] == rows["float"]["accuracy"]
    assert rows["pruned"]["params"] < rows["float"]["params"] and rows["pruned"]["macs"] < rows["float"]["macs"]
    assert rows["int8"]["bytes"] < rows["fp16"]["bytes"] < rows["fold-bn"]["bytes"]
    table = res.output.split("artifacts:")[0]
    assert re.search(r"^float\s+\d+\.\d\d%", table, re.M), table

    before = snapshot(paths)
    assert len(before) >= len(paths) - 3  # only the timed reports are left out
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert listed(again.output) == paths
    after = snapshot(paths)
    assert after.keys() == before.keys()
    for p in before:
        assert after[p] == before[p], f"{p} differs on a second run"
