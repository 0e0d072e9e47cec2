"""The run loop: resume, determinism, snapshots, fine-tuning, divergence, test nets, signals, logs."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest

from dnntool.errors import DnnToolError, NetError, UsageError, WeightsError
from dnntool.io.caffemodel import (
    history_arrays,
    load_weights,
    read_caffemodel,
    read_solverstate,
    save_caffemodel,
)
from dnntool.net import Net
from dnntool.proto import caffe_pb2
from dnntool.train.loop import Diverged, load_solver, train
from dnntool.train.snapshot import resolve_prefix
from tests.train.nets import conv_solver, tiny_data, tiny_solver


def run(sp, **kw):
    kw.setdefault("device", "cpu")
    kw.setdefault("handle_signals", False)
    return train(sp, **kw)


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        for x, y in zip(a[k], b[k], strict=True):
            np.testing.assert_array_equal(x, y, err_msg=k)


# -- resume and determinism ------------------------------------------------------------------------
def test_resume_continues_exactly(tmp_path):
    """200 straight = 100, stop, resume from the solverstate, 100 more: identical weights (random
    crops and mirrors, Dropout, momentum history and the data position all carry over)."""
    straight = run(conv_solver(tmp_path, "a/s", max_iter=200, snapshot=100, display=50, test_interval=50))
    first = run(conv_solver(tmp_path, "b/s", max_iter=100, snapshot=100, display=50, test_interval=50))
    assert first.snapshots[-1][1].endswith("b/s_iter_100.solverstate")
    resumed = run(conv_solver(tmp_path, "b/s", max_iter=200, snapshot=100, display=50, test_interval=50),
                  snapshot=first.snapshots[-1][1])
    assert resumed.start_iteration == 100 and resumed.iteration == 200
    assert_same(straight.weights, resumed.weights)
    assert straight.weights["conv"][0].shape == (4, 1, 3, 3)
    a, b = (read_solverstate(tmp_path / f"{p}/s_iter_200.solverstate") for p in "ab")
    for x, y in zip(history_arrays(a), history_arrays(b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert [d.loss for d in straight.displays[2:]] == [d.loss for d in resumed.displays]


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    a = run(conv_solver(tmp_path, "a/s", max_iter=30))
    b = run(conv_solver(tmp_path, "b/s", max_iter=30))
    c = run(conv_solver(tmp_path, "c/s", max_iter=30, random_seed=4))
    assert_same(a.weights, b.weights)
    assert not np.array_equal(a.weights["ip"][0], c.weights["ip"][0])


def test_snapshot_and_weights_together_is_usage_error(tmp_path):
    with pytest.raises(UsageError, match="not both"):
        run(tiny_solver(), weights="w.caffemodel", snapshot="s.solverstate")


# -- snapshots -------------------------------------------------------------------------------------
def test_snapshots_named_and_complete(tmp_path):
    sp = conv_solver(tmp_path, "snap/lenet", max_iter=25, snapshot=10)
    res = run(sp)
    names = sorted(p.name for p in (tmp_path / "snap").iterdir())
    assert names == [f"lenet_iter_{n}.{ext}" for n in (10, 20, 25) for ext in ("caffemodel", "solverstate")]
    state = read_solverstate(tmp_path / "snap/lenet_iter_25.solverstate")
    assert state.iter == 25 and state.learned_net == str(tmp_path / "snap/lenet_iter_25.caffemodel")
    w = load_weights(state.learned_net)
    assert list(w.blobs) == ["conv", "ip"]
    assert_same({k: v for k, v in w.blobs.items()}, res.weights)
    net = Net.from_param(sp.net_param, "train")  # every TRAIN-net layer, as Caffe's Net::ToProto
    assert [lp.name for lp in read_caffemodel(state.learned_net).layer] == [layer.name for layer in net.layers]


def test_no_snapshot_at_end_when_one_was_just_taken_or_disabled(tmp_path):
    res = run(conv_solver(tmp_path, "a/s", max_iter=20, snapshot=10))
    assert [Path(m).name for m, _ in res.snapshots] == ["s_iter_10.caffemodel", "s_iter_20.caffemodel"]
    res = run(conv_solver(tmp_path, "b/s", max_iter=5, snapshot=0, snapshot_after_train=False))
    assert res.snapshots == [] and not (tmp_path / "b").exists()


def test_interrupted_snapshot_leaves_old_files_intact(tmp_path, monkeypatch):
    import dnntool.io.atomic as atomic

    calls = {"n": 0}
    real = atomic.os.fsync

    def flaky(fd):
        calls["n"] += 1
        if calls["n"] == 3:  # the second snapshot's caffemodel
            raise OSError(28, "No space left on device")
        real(fd)

    monkeypatch.setattr(atomic.os, "fsync", flaky)
    with pytest.raises(DnnToolError, match=r"cannot write the snapshot .*s_iter_20: No space left"):
        run(conv_solver(tmp_path, "a/s", max_iter=30, snapshot=10))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["s_iter_10.caffemodel", "s_iter_10.solverstate"]


def test_killed_runs_unfinished_snapshots_are_removed(tmp_path):
    # SIGKILL between write and rename leaves a hidden .tmp beside the snapshots (MPI's launcher
    # kills every rank when one dies); the next run on the prefix removes those older than itself
    # with its first snapshot and names them in its log. Other files, and a .tmp written after the
    # run started (another run's snapshot in flight), stay.
    import time

    folder = tmp_path / "k"
    folder.mkdir()
    old = [folder / ".s_iter_20.caffemodel.x1y2.tmp", folder / ".s_iter_20.solverstate.a_b.tmp"]
    keep = [folder / ".other_iter_20.caffemodel.x1y2.tmp", folder / "s_iter_5.caffemodel.tmp", folder / "notes.txt"]
    for f in old + keep:
        f.write_bytes(b"partial")
        os.utime(f, (time.time() - 3600, time.time() - 3600))
    fresh = folder / ".s_iter_30.caffemodel.zz.tmp"
    lines: list[str] = []

    def log(line):
        lines.append(line)
        if "Iteration 0," in line and not fresh.exists():
            fresh.write_bytes(b"in flight")  # after the run started
    run(conv_solver(tmp_path, "k/s", max_iter=10, snapshot=10, display=1), log=log)
    left = sorted(p.name for p in folder.iterdir())
    assert left == sorted([fresh.name, *(f.name for f in keep), "s_iter_10.caffemodel", "s_iter_10.solverstate"])
    assert sum("an unfinished snapshot of an earlier run" in line for line in lines) == 2


def test_snapshot_prefix_resolution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp" / "snaps").mkdir(parents=True)
    solver = str(tmp_path / "exp" / "solver.prototxt")
    assert resolve_prefix("", solver) == str(tmp_path / "exp" / "solver")
    assert resolve_prefix("snaps/", solver) == str(tmp_path / "exp" / "snaps" / "solver")
    assert resolve_prefix("snaps/lenet", solver) == str(tmp_path / "exp" / "snaps" / "lenet")
    (tmp_path / "snaps").mkdir()  # the cwd wins, as in Caffe
    assert resolve_prefix("snaps/lenet", solver) == "snaps/lenet"
    assert resolve_prefix("lenet", solver) == "lenet"


# -- solver files ----------------------------------------------------------------------------------
def test_solver_paths_relative_to_cwd_then_solver_folder(tmp_path, monkeypatch):
    from google.protobuf import text_format

    from tests.train.nets import TINY_NET

    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "net.prototxt").write_text(TINY_NET)
    (exp / "solver.prototxt").write_text('net: "net.prototxt"\ntest_iter: 2\ntest_iter: 1\ntest_interval: 3\nbase_lr: 0.1\n'
                                         'max_iter: 3\nsnapshot_prefix: "out/tiny"\ndisplay: 1\n')
    monkeypatch.chdir(tmp_path)
    nets = load_solver(exp / "solver.prototxt")
    assert nets.train[1] == str(exp / "net.prototxt") and len(nets.tests) == 2
    res = train(exp / "solver.prototxt", device="cpu", data=tiny_data(), test_data=tiny_data(1),
                handle_signals=False)
    assert res.snapshots == [("out/tiny_iter_3.caffemodel", "out/tiny_iter_3.solverstate")]
    assert (tmp_path / "out/tiny_iter_3.caffemodel").exists()
    assert [t.net for t in res.tests] == [0, 1, 0, 1]
    bad = text_format.Parse("base_lr: 0.1 test_iter: 1 test_interval: 1", caffe_pb2.SolverParameter())
    with pytest.raises(NetError, match="exactly one train net"):
        load_solver(bad)


def test_test_iter_without_interval_is_an_error():
    sp = tiny_solver(test_iter=[2])
    with pytest.raises(NetError, match="test_interval must be positive"):
        load_solver(sp)


# -- fine-tuning -----------------------------------------------------------------------------------
def test_weights_fine_tune_copies_by_layer_name(tmp_path):
    src = tmp_path / "src.caffemodel"
    net = Net.from_param(tiny_solver().net_param, "train")
    w = np.full((2, 3), 0.25, np.float32)
    save_caffemodel(src, [layer.param for layer in net.layers], {"ip": [w, np.zeros(2, np.float32)],
                                                                 "other": [np.ones(3, np.float32)]})
    lines = []
    res = run(tiny_solver(max_iter=0, base_lr=0), weights=str(src), data=tiny_data(), log=lines.append)
    np.testing.assert_array_equal(res.weights["ip"][0], w)
    assert f"Finetuning from {src}" in lines


def test_weights_shape_mismatch_names_layer_and_shapes(tmp_path):
    src = tmp_path / "src.caffemodel"
    net = Net.from_param(tiny_solver().net_param, "train")
    save_caffemodel(src, [layer.param for layer in net.layers],
                    {"ip": [np.zeros((5, 3), np.float32), np.zeros(5, np.float32)]})
    with pytest.raises(WeightsError) as e:
        run(tiny_solver(), weights=str(src), data=tiny_data())
    assert str(e.value) == (f"{src}: layer 'ip' (InnerProduct) weights has shape 5x3 in the caffemodel but"
                            " 2x3 in the net; rename the layer to learn it from scratch")


# -- divergence ------------------------------------------------------------------------------------
def test_nan_loss_stops_naming_the_iteration_and_keeps_last_snapshot(tmp_path):
    data = tiny_data()
    x = data["x"]

    def batches(k):
        b = x[(np.arange(4) + 4 * k) % 16].copy()
        if k == 5:
            b[0, 0] = np.nan
        return b

    sp = tiny_solver(max_iter=10, snapshot=2, snapshot_prefix=str(tmp_path / "s"), snapshot_after_train=True)
    with pytest.raises(Diverged) as e:
        run(sp, data={"x": batches, "t": data["t"]})
    assert str(e.value) == (f"iteration 5: the loss is nan; training stopped and the last good snapshot is"
                            f" {tmp_path / 's'}_iter_4.caffemodel (lower base_lr or check the data)")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"s_iter_{n}.{e}" for n in (2, 4)
                                                         for e in ("caffemodel", "solverstate")]


# -- test nets -------------------------------------------------------------------------------------
def test_test_net_outputs_averaged_and_reader_continues(tmp_path):
    """Outputs are means over test_iter batches; the test reader goes on between tests (Caffe)."""
    def xs(k):
        return np.full((4, 3), k + 1.0, np.float32)

    sp = tiny_solver(max_iter=4, test_iter=[3], test_interval=2, test_compute_loss=True)
    lines: list[str] = []
    res = run(sp, data=tiny_data(), test_data={"x": xs, "t": np.zeros((4, 2), np.float32)}, log=lines.append)
    assert [t.iteration for t in res.tests] == [0, 2, 4]
    means = [next(o.value for o in t.outputs if o.name == "xmean") for t in res.tests]
    assert means == [2.0, 5.0, 8.0]  # batches 1..3, 4..6, 7..9
    for t in res.tests:
        loss = next(o for o in t.outputs if o.name == "loss")
        assert loss.loss_weight == 2 and t.loss == pytest.approx(2 * loss.value, rel=1e-6)
    i = lines.index("Iteration 2, Testing net (#0)")
    assert re.fullmatch(r"Test loss: [\d.e+-]+", lines[i + 1])
    assert re.fullmatch(r"    Test net output #0: loss = ([\d.e+-]+) \(\* 2 = [\d.e+-]+ loss\)", lines[i + 2])
    assert lines[i + 3] == "    Test net output #1: xmean = 5"


def test_test_initialization_false_skips_iteration_zero():
    sp = tiny_solver(max_iter=4, test_iter=[1], test_interval=2, test_initialization=False)
    res = run(sp, data=tiny_data(), test_data=tiny_data(1))
    assert [t.iteration for t in res.tests] == [2, 4]


# -- signals ---------------------------------------------------------------------------------------
@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_snapshots_and_goes_on_sigint_snapshots_and_stops(tmp_path):
    before = signal.getsignal(signal.SIGINT)

    def progress(done, total):
        if done == 3:
            os.kill(os.getpid(), signal.SIGHUP)
        if done == 7:
            os.kill(os.getpid(), signal.SIGINT)

    sp = tiny_solver(max_iter=20, snapshot_prefix=str(tmp_path / "s"), snapshot_after_train=True)
    lines: list[str] = []
    res = train(sp, device="cpu", data=tiny_data(), progress=progress, log=lines.append)
    assert res.stopped and res.iteration == 7
    assert [Path(m).name for m, _ in res.snapshots] == ["s_iter_3.caffemodel", "s_iter_7.caffemodel"]
    assert lines[-1] == "Optimization stopped early."
    assert signal.getsignal(signal.SIGINT) is before


# -- logs ------------------------------------------------------------------------------------------
# tools/extra/parse_log.py (BVLC/caffe)
RE_ITERATION = re.compile(r"Iteration (\d+)")
RE_TRAIN = re.compile(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)")
RE_TEST = re.compile(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)")
RE_LR = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")


def parse_log(lines):
    """parse_log.py's row logic (without timestamps): train and test rows by iteration."""
    it, lr, train_rows, test_rows = -1, float("nan"), {}, {}
    for line in lines:
        m = RE_ITERATION.search(line)
        if m:
            it = int(m.group(1))
        if it == -1:
            continue
        m = RE_LR.search(line)
        if m:
            lr = float(m.group(1))
        for rx, rows in ((RE_TRAIN, train_rows), (RE_TEST, test_rows)):
            m = rx.search(line)
            if m:
                rows.setdefault(it, {"lr": lr})[m.group(2)] = float(m.group(3))
    return train_rows, test_rows


def test_log_lines_parse_with_caffe_regexes(tmp_path):
    lines: list[str] = []
    sp = conv_solver(tmp_path, "a/s", max_iter=20, display=5, average_loss=3)
    res = run(sp, log=lines.append)
    train_rows, test_rows = parse_log(lines)
    assert sorted(train_rows) == [0, 5, 10, 15]
    assert sorted(test_rows) == [0, 10, 20]
    for d in res.displays:
        assert train_rows[d.iteration]["loss"] == pytest.approx(d.outputs[0].value, rel=1e-5)
    assert test_rows[10]["acc"] == pytest.approx(res.tests[1].outputs[0].value, rel=1e-5)
    # the lr seen with a test row is the one printed before it, as parse_log.py reads it
    assert test_rows[20]["lr"] == pytest.approx(0.05 * 0.5 ** 0, rel=1e-6)
    disp = next(ln for ln in lines if ln.startswith("Iteration 5 ("))
    assert re.fullmatch(r"Iteration 5 \([\d.e+-]+ iter/s, [\d.e+-]+s/5 iters\), loss = [\d.e+-]+", disp)
    assert "Iteration 5, lr = 0.05, solver = SGD" in lines
    assert res.displays[0].loss == pytest.approx(res.displays[0].outputs[0].value)  # one loss so far
    assert lines[:2] == ["Solving small on CPUExecutionProvider", "Learning Rate Policy: step"]
    assert lines[-1] == "Optimization Done."


def test_average_loss_smooths_the_displayed_loss():
    sp = tiny_solver(max_iter=6, display=1, average_loss=3)
    res = run(sp, data=tiny_data())
    raw = [2 * d.outputs[0].value for d in res.displays]  # loss_weight 2
    want = [np.mean(raw[max(0, i - 2):i + 1]) for i in range(len(raw))]
    assert [d.loss for d in res.displays] == pytest.approx(want, rel=1e-5)


def test_input_layer_without_data_names_what_to_pass():
    with pytest.raises(NetError, match=r"layer 'data' \(Input\) has no source to read: pass arrays for its"
                                       r" tops \('x', 't'\)"):
        run(tiny_solver())
