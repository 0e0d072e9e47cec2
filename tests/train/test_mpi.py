"""Data-parallel training over MPI: 2 ranks equal one process with iter_size 2 over the same records,
resume under MPI, a killed rank ends the job (no hang), the fused buffer, the launcher's env."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from dnntool.errors import DnnToolError
from dnntool.io.caffemodel import load_weights, read_caffemodel, read_solverstate
from dnntool.proto import caffe_pb2
from dnntool.train import dist
from dnntool.train.loop import train
from tests.train.nets import write_lmdb

pytest.importorskip("mpi4py")
try:
    MPIEXEC = dist.mpiexec()
except DnnToolError:  # no launcher: the tests that need one are skipped
    MPIEXEC = None
needs_mpiexec = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install 'dnntool[mpi]')")

NET = """
name: "mpinet"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.00390625 }
  data_param { source: "%(train)s" batch_size: 4 } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.00390625 }
  data_param { source: "%(test)s" batch_size: 8 } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def solver(tmp: Path, name: str, db: str = "train_lmdb", net: str = NET, **fields) -> Path:
    """A solver file over NET reading ``tmp/db`` (32 records), snapshots under ``tmp/name``."""
    train_db, test_db = tmp / db, tmp / "test_lmdb"
    if not test_db.exists():
        write_lmdb(tmp / "train_lmdb", 32, seed=5)
        write_lmdb(test_db, 16, seed=6)
    sp = caffe_pb2.SolverParameter(
        base_lr=0.002, momentum=0.9, weight_decay=0.001, lr_policy="step", gamma=0.5, stepsize=20,
        max_iter=50, display=10, snapshot=25, snapshot_prefix=str(tmp / name / "s"), random_seed=7,
        test_iter=[2], test_interval=25)
    text_format.Parse(net % {"train": train_db, "test": test_db}, sp.net_param)
    for k, v in fields.items():
        setattr(sp, k, v)
    (tmp / name).mkdir(exist_ok=True)
    path = tmp / name / "solver.prototxt"
    path.write_text(text_format.MessageToString(sp))
    return path


def batch_interleaved(tmp: Path, world: int = 2, batch: int = 4) -> str:
    """The records of train_lmdb in the order one process reads what ``world`` ranks read: rank 0's
    batch 0, rank 1's batch 0, rank 0's batch 1... (rank r reads records r, r + world, ...)."""
    import lmdb

    src = lmdb.open(str(tmp / "train_lmdb"), readonly=True, lock=False)
    with src.begin() as txn:
        values = [v for _, v in txn.cursor()]
    src.close()
    n = len(values)
    order = [(r + world * (k * batch + j)) % n for k in range(n // (world * batch))
             for r in range(world) for j in range(batch)]
    assert sorted(order) == list(range(n))
    env = lmdb.open(str(tmp / "interleaved_lmdb"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i, k in enumerate(order):
            txn.put(f"{i:08d}".encode(), values[k])
    env.close()
    return "interleaved_lmdb"


def dnntool(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in dist._SIZE_VARS + dist._RANK_VARS}
    return subprocess.run([sys.executable, "-m", "dnntool", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def mpirun(n: int, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([MPIEXEC, "-n", str(n), sys.executable, "-m", "dnntool", *args],
                          capture_output=True, text=True, timeout=timeout)


def blobs(path) -> dict[str, list[np.ndarray]]:
    return {name: [np.asarray(b) for b in arrs] for name, arrs in load_weights(path).blobs.items()}


def assert_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        for x, y in zip(a[k], b[k], strict=True):
            np.testing.assert_allclose(x, y, atol=atol, rtol=0, err_msg=k)


# -- the proof ---------------------------------------------------------------------------------------
@needs_mpiexec
def test_two_ranks_equal_one_process_with_iter_size_2(tmp_path):
    """N=2 ranks (each reading every 2nd record) for 50 iterations = one process with iter_size 2
    over the same records in the same order, within 1e-5 (BatchNorm's batch statistics included:
    each sub-batch holds exactly one rank's batch)."""
    mpi_solver = solver(tmp_path, "mpi")
    single = train(str(solver(tmp_path, "single", batch_interleaved(tmp_path), iter_size=2)), device="cpu",
                   handle_signals=False)
    proc = dnntool("train", "--solver", str(mpi_solver), "--workers", "2", "--plain")
    assert proc.returncode == 0, proc.stderr
    got = blobs(tmp_path / "mpi" / "s_iter_50.caffemodel")
    want = {k: [np.asarray(b) for b in v] for k, v in single.weights.items()}
    # learnable blobs; BatchNorm's moving averages are updated once per iteration from the ranks'
    # averaged statistics, where one process with iter_size 2 updates them once per sub-batch
    bn = want.pop("bn"), got.pop("bn")
    assert_close(got, want, 1e-5)
    assert bn[1][2][0] == pytest.approx(sum(0.999**k for k in range(50)), rel=1e-5)
    # rank 0 alone logs (each line once), with the global loss
    assert proc.stdout.count("Iteration 40, lr = ") == 1
    assert "Data-parallel over 2 MPI ranks (global batch 2 x 4)" in proc.stdout
    losses = [float(x) for x in re.findall(r"Iteration \d+ \(.*\), loss = ([\d.e+-]+)", proc.stdout)]
    assert len(losses) == 5
    np.testing.assert_allclose(losses, [d.loss for d in single.displays], rtol=1e-4)
    assert proc.stdout.count("Test net output #0: acc = ") == 3  # 0 (test_initialization), 25, 50


@needs_mpiexec
def test_two_ranks_equal_iter_size_2_over_the_plain_record_order(tmp_path):
    """Without BatchNorm (whose batch statistics depend on how records are grouped), 2 ranks over
    the DB as it is equal one process with iter_size 2 over the same DB within float rounding: each
    iteration's two batches hold the same 8 records, split by rank instead of by sub-batch."""
    net = NET.replace('layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }\n', "")
    assert "BatchNorm" not in net
    single = train(str(solver(tmp_path, "single", net=net, iter_size=2)), device="cpu", handle_signals=False)
    proc = mpirun(2, "train", "--solver", str(solver(tmp_path, "mpi", net=net)), "--quiet")
    assert proc.returncode == 0, proc.stderr
    want = {k: [np.asarray(b) for b in v] for k, v in single.weights.items()}
    assert_close(blobs(tmp_path / "mpi" / "s_iter_50.caffemodel"), want, 1e-5)


@needs_mpiexec
def test_resume_under_mpi(tmp_path):
    """2 ranks: 50 straight = 25, resume from the solverstate, 25 more (each rank restores the
    snapshot and repositions its share of the records)."""
    straight = mpirun(2, "train", "--solver", str(solver(tmp_path, "a")), "--plain")
    assert straight.returncode == 0, straight.stderr
    first = mpirun(2, "train", "--solver", str(solver(tmp_path, "b", max_iter=25)), "--plain")
    assert first.returncode == 0, first.stderr
    resumed = mpirun(2, "train", "--solver", str(solver(tmp_path, "b")), "--plain",
                     "--snapshot", str(tmp_path / "b" / "s_iter_25.solverstate"))
    assert resumed.returncode == 0, resumed.stderr
    assert "Restoring previous solver status" in resumed.stdout
    assert_close(blobs(tmp_path / "a" / "s_iter_50.caffemodel"), blobs(tmp_path / "b" / "s_iter_50.caffemodel"),
                 1e-6)


def _rank_pids(marker: str) -> dict[int, int]:
    """rank -> pid of the running ranks whose command line names ``marker``."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in cmd and "-m dnntool" in cmd:
            for e in env:
                if e.startswith(b"PMI_RANK="):
                    out[int(e[9:])] = int(d.name)
    return out


@needs_mpiexec
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_killed_rank_ends_the_job(tmp_path):
    """kill -9 of rank 1 mid-run: the job exits non-zero within seconds (no rank hangs in the
    Allreduce), and the last snapshot written stays intact."""
    path = solver(tmp_path, "kill", max_iter=100000, snapshot=20, display=0, test_interval=10**6,
                  test_initialization=False)
    proc = subprocess.Popen([sys.executable, "-m", "dnntool", "train", "--solver", str(path), "--workers", "2",
                             "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "kill" / "s_iter_40.solverstate").exists():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1]
            time.sleep(0.2)
        pids = _rank_pids(str(path))
        assert set(pids) == {0, 1}
        os.kill(pids[1], signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    assert "the 2-rank training job failed" in err
    snaps = sorted((tmp_path / "kill").glob("s_iter_*.caffemodel"), key=lambda p: int(p.stem.split("_")[-1]))
    assert snaps
    for snap in snaps:  # every file at a final name is complete (a snapshot cut short by the
        read_caffemodel(snap)  # launcher's SIGKILL can only leave a hidden .tmp file beside them)
        read_solverstate(snap.with_suffix(".solverstate"))
    assert load_weights(snaps[-1]).blobs["conv"][0].shape == (4, 1, 3, 3)
    assert all(p.name.startswith(".") and p.name.endswith(".tmp") for p in (tmp_path / "kill").iterdir()
               if not p.name.startswith("s_") and p.name != "solver.prototxt")


# -- pieces ------------------------------------------------------------------------------------------
def test_fused_buffer_aligns_every_slice():
    fb = dist.FusedBuffer({"a": (3, 5), "b": (), "c": (17,)}, extra=2)
    assert [off for off, _ in fb.slices.values()] == [0, 16, 32]
    assert fb.data.size == 64 + 2 and fb.extra.size == 2
    fb.view("a")[...] = 1
    fb.view("c")[...] = 2
    assert fb.data[:15].sum() == 15 and fb.data[15] == 0 and fb.view("b").shape == ()
    assert np.shares_memory(fb.view("c"), fb.data)


def test_launcher_environment(monkeypatch):
    for var in dist._SIZE_VARS + dist._RANK_VARS:
        monkeypatch.delenv(var, raising=False)
    assert dist.launched_size() == 1 and dist.launched_rank() == 0 and dist.Comm.detect() is None
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "3")
    assert dist.launched_size() == 4 and dist.launched_rank() == 3


def test_workers_needs_a_launcher(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from dnntool.cli import cli

    monkeypatch.setattr(dist, "mpiexec", lambda: (_ for _ in ()).throw(
        dist.DnnToolError("--workers needs an MPI launcher (mpiexec) and mpi4py: pip install 'dnntool[mpi]'")))
    res = CliRunner().invoke(cli, ["train", "--solver", str(solver(tmp_path, "w")), "--workers", "2"])
    assert res.exit_code == 1 and "pip install 'dnntool[mpi]'" in res.output
    res = CliRunner().invoke(cli, ["train", "--solver", str(solver(tmp_path, "w")), "--workers", "0"])
    assert res.exit_code == 2


FAILING_RANK = """
import sys
sys.path.insert(0, {root!r})
import numpy as np
from dnntool.train import dist
from dnntool.train.loop import train
from tests.train.nets import tiny_data, tiny_solver

arrays = tiny_data()

def x(k):
    if dist.launched_rank() == 1 and k >= 7:
        raise ValueError("no batch " + str(k))
    return arrays["x"][4 * (k % 4):4 * (k % 4) + 4]

train(tiny_solver(max_iter=10**6, display=0), device="cpu", data={{"x": x, "t": arrays["t"]}},
      handle_signals=False)
"""


@needs_mpiexec
def test_an_error_on_one_rank_stops_the_job(tmp_path):
    """An exception on rank 1 alone (rank 0 is waiting in the Allreduce): the job ends at once,
    non-zero, with one line naming the rank and the error."""
    script = tmp_path / "job.py"
    script.write_text(FAILING_RANK.format(root=str(Path(__file__).resolve().parents[2])))
    t = time.time()
    proc = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode != 0 and time.time() - t < 60
    assert "Error (rank 1 of 2; stopping the job): ValueError: no batch 7" in proc.stderr


@needs_mpiexec
def test_ctrl_c_snapshots_and_stops_every_rank_at_the_same_iteration(tmp_path):
    """SIGINT to mpiexec (it forwards Ctrl-C to the ranks): the stop request travels with the
    gradients, every rank stops after the same iteration, rank 0 snapshots there, exit 130."""
    path = solver(tmp_path, "int", max_iter=100000, snapshot=20, display=0, test_interval=10**6,
                  test_initialization=False)
    proc = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, "-m", "dnntool", "train", "--solver", str(path),
                             "--plain"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "int" / "s_iter_40.solverstate").exists():
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1]
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    stop = re.findall(r"Interrupted at iteration (\d+); snapshot (\S+)", err)
    assert len(stop) == 1 and out.count("Optimization stopped early.") == 1
    assert Path(stop[0][1]).exists() and int(stop[0][0]) >= 40
