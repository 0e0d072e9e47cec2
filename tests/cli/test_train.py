"""``dnntool train`` through the CLI: logs that Caffe's parse_log.py reads, --log-json, resume,
fine-tune errors, divergence, Ctrl-C."""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dnntool.cli import cli
from dnntool.io.caffemodel import save_caffemodel
from tests.train.nets import CONV_NET, write_lmdb

SOLVER = """net: "net.prototxt"
test_iter: 2
test_interval: 10
base_lr: %(lr)s
momentum: 0.9
lr_policy: "inv"
gamma: 0.0001
power: 0.75
display: 5
max_iter: %(max_iter)d
snapshot: 10
snapshot_prefix: "snaps/small"
random_seed: 1
"""


def make(tmp: Path, max_iter: int = 20, lr: str = "0.05") -> Path:
    write_lmdb(tmp / "train_lmdb", 24, seed=1)
    write_lmdb(tmp / "test_lmdb", 12, seed=2)
    (tmp / "net.prototxt").write_text(CONV_NET % {"train": "train_lmdb", "test": "test_lmdb"})
    (tmp / "solver.prototxt").write_text(SOLVER % {"lr": lr, "max_iter": max_iter})
    return tmp / "solver.prototxt"


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


def extract_datetime(line: str, year: int) -> datetime.datetime:
    """tools/extra/extract_seconds.py: the glog prefix 'I0210 13:39:22.381027 ...'."""
    f = line.strip().split()
    month, day = int(f[0][1:3]), int(f[0][3:])
    ts = f[1]
    pos = ts.rfind(".")
    h, m, s = (int(x) for x in ts[:pos].split(":"))
    return datetime.datetime(year, month, day, h, m, s, int(ts[pos + 1:]))


def parse_log(text: str):
    """tools/extra/parse_log.py: rows (NumIters, Seconds, LearningRate, outputs) for train and test."""
    year = datetime.datetime.now().year
    lines = text.splitlines()
    start = next(extract_datetime(ln, year) for ln in lines if "Solving" in ln)
    it, lr, train, test = -1, float("nan"), [], []
    for line in lines:
        m = re.search(r"Iteration (\d+)", line)
        if m:
            it = float(m.group(1))
        if it == -1:
            continue
        seconds = (extract_datetime(line, year) - start).total_seconds()
        m = re.search(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)", line)
        if m:
            lr = float(m.group(1))
        for rx, rows in ((r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)", train),
                         (r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)", test)):
            m = re.search(rx, line)
            if m:
                if not rows or rows[-1]["NumIters"] != it:
                    rows.append({"NumIters": it, "Seconds": seconds, "LearningRate": lr})
                rows[-1][m.group(2)] = float(m.group(3))
    return train, test


def test_train_logs_read_by_parse_log(tmp_path, monkeypatch):
    solver = make(tmp_path)
    monkeypatch.chdir(tmp_path)
    res = invoke("train", "--solver", str(solver), "--device", "cpu", "--log-json", "events.jsonl")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert all(re.match(r"I\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ dnntool\] ", ln) for ln in lines), lines[:3]
    train, test = parse_log(res.stdout)
    assert [r["NumIters"] for r in train] == [0, 5, 10, 15]
    assert [r["NumIters"] for r in test] == [0, 10, 20]
    assert all(r["Seconds"] >= 0 for r in train + test)
    # as with Caffe's logs, a row carries the lr printed before it (the previous display's)
    assert train[2]["LearningRate"] == pytest.approx(0.05 * (1 + 0.0001 * 5) ** -0.75, rel=1e-5)
    assert {"loss"} <= set(train[0]) and {"acc", "loss"} <= set(test[0])
    assert sorted(p.name for p in (tmp_path / "snaps").iterdir()) == [
        "small_iter_10.caffemodel", "small_iter_10.solverstate", "small_iter_20.caffemodel",
        "small_iter_20.solverstate"]
    events = [json.loads(ln) for ln in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [(e["event"], e["iteration"]) for e in events] == [
        ("test", 0), ("train", 0), ("train", 5), ("test", 10), ("train", 10), ("train", 15), ("test", 20)]
    assert events[1]["solver"] == "SGD" and events[1]["outputs"][0]["name"] == "loss"
    assert events[0]["outputs"][0]["name"] == "acc"
    assert events[0]["outputs"][0]["value"] == pytest.approx(test[0]["acc"], rel=1e-5)


def test_train_plain_and_resume(tmp_path, monkeypatch):
    solver = make(tmp_path, max_iter=10)
    monkeypatch.chdir(tmp_path)
    assert invoke("train", "--solver", str(solver), "--device", "cpu", "--plain").exit_code == 0
    solver.write_text(solver.read_text().replace("max_iter: 10", "max_iter: 15"))
    res = invoke("train", "--solver", str(solver), "--plain", "--snapshot", "snaps/small_iter_10.solverstate")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0] == "Restoring previous solver status from snaps/small_iter_10.solverstate"
    assert lines[1].startswith("Solving small on ") and "Iteration 10, Testing net (#0)" in lines
    assert lines[-3:] == ["Snapshotting to binary proto file snaps/small_iter_15.caffemodel",
                          "Snapshotting solver state to binary proto file snaps/small_iter_15.solverstate",
                          "Optimization Done."]


def test_train_quiet_prints_nothing(tmp_path, monkeypatch):
    solver = make(tmp_path, max_iter=3)
    monkeypatch.chdir(tmp_path)
    res = invoke("train", "--solver", str(solver), "-q")
    assert res.exit_code == 0 and res.output == ""


def test_train_weights_shape_mismatch(tmp_path, monkeypatch):
    solver = make(tmp_path)
    monkeypatch.chdir(tmp_path)
    from google.protobuf import text_format

    from dnntool.proto import caffe_pb2

    lp = text_format.Parse('name: "ip" type: "InnerProduct"', caffe_pb2.LayerParameter())
    save_caffemodel("old.caffemodel", [lp], {"ip": [np.zeros((10, 64), np.float32), np.zeros(10, np.float32)]})
    res = invoke("train", "--solver", str(solver), "--weights", "old.caffemodel")
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines()[-1] == (
        "Error: old.caffemodel: layer 'ip' (InnerProduct) weights has shape 10x64 in the caffemodel but"
        " 3x64 in the net; rename the layer to learn it from scratch")


def test_train_missing_solver_and_divergence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = invoke("train", "--solver", "nope.prototxt")
    assert res.exit_code == 1 and res.stderr.startswith("Error: ") and "nope.prototxt" in res.stderr
    solver = make(tmp_path, lr="1e30")
    res = invoke("train", "--solver", str(solver), "--plain")
    assert res.exit_code == 1
    assert re.fullmatch(r"Error: iteration \d+: the loss is (nan|inf|-inf); training stopped and no snapshot"
                        r" was written \(lower base_lr or check the data\)\n", res.stderr)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_snapshots_and_exits_130(tmp_path):
    solver = make(tmp_path, max_iter=1_000_000)
    proc = subprocess.Popen([sys.executable, "-m", "dnntool", "train", "--solver", str(solver), "--plain"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        if line.startswith("Iteration 10 (") or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Optimization stopped early." in out
    m = re.search(r"Interrupted at iteration (\d+); snapshot (\S+)", err)
    assert m and (tmp_path / m.group(2)).exists()
    assert (tmp_path / m.group(2).replace(".solverstate", ".caffemodel")).exists()
    assert os.path.basename(m.group(2)) == f"small_iter_{m.group(1)}.solverstate"
