"""samples/digits/Makefile: the demo pipeline as make targets with real file dependencies. A full
run succeeds, a second one does nothing, and touching the solver reruns training and what follows
it but not the conversion; a size check over its limit stops make and leaves no file behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "digits"
SOURCES = ["Makefile", "make_digits.py", "lenet_solver.prototxt", "lenet_train_test.prototxt",
           "lenet_bn_train_test.prototxt"]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def make(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    bindir = str(Path(sys.executable).parent)  # this environment's dnntool
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
    return subprocess.run(["make", "ITERS=30", "FT_ITERS=10", f"PYTHON={sys.executable}", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)


def test_makefile_pipeline(tmp_path):
    pytest.importorskip("sklearn")
    work = tmp_path / "digits"
    work.mkdir()
    for name in SOURCES:
        shutil.copy2(SAMPLES / name, work / name)

    res = make(work)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for out in ("digits_train_lmdb/data.mdb", "digits_val_lmdb/data.mdb", "digits_mean.binaryproto",
                "lenet.params.txt", "lenet.flops.txt", "lenet.html", "lenet_digits_iter_30.caffemodel",
                "lenet.train.log", "lenet.curves.html", "featuremaps/index.json", "lenet_folded.caffemodel",
                "lenet_pruned.caffemodel", "lenet_pruned_ft_iter_10.caffemodel", "lenet_int8.onnx", "lenet_fp16.onnx"):
        assert (work / out).exists(), out
    for name in ("lenet", "lenet_bn", "lenet_folded", "lenet_pruned", "lenet_pruned_ft", "lenet_int8", "lenet_fp16"):
        text = (work / f"{name}.test.txt").read_text()
        assert text.startswith("Running for 6 iterations of batch 60 (360 images)") and "accuracy = " in text
    assert not list(work.glob("*.tmp"))

    assert make(work, "-q").returncode == 0  # everything is up to date
    again = make(work)
    assert again.returncode == 0 and "Nothing to be done for 'all'" in again.stdout, again.stdout

    later = time.time() + 2
    os.utime(work / "lenet_solver.prototxt", (later, later))
    plan = make(work, "-n")
    assert plan.returncode == 0
    steps = [ln.split()[1] for ln in plan.stdout.splitlines() if ln.startswith("dnntool ")]
    assert steps.count("train") == 3  # LeNet, its BatchNorm variant, the fine-tuning of the pruned net
    assert {"test", "featuremap-dump", "plot-log", "fold-bn", "prune", "quantize"} <= set(steps)
    assert not {"convert-images", "compute-image-mean", "param-count", "flops", "netscope"} & set(steps)
    assert "make_digits.py" not in plan.stdout


def test_a_size_check_over_its_limit_stops_make(tmp_path):
    work = tmp_path / "digits"
    work.mkdir()
    for name in SOURCES:
        shutil.copy2(SAMPLES / name, work / name)
    res = make(work, "MAX_PARAMS=100K", "lenet.params.txt")
    assert res.returncode == 2  # make's status when a recipe fails
    assert ("Error: lenet_train_test.prototxt: total learnable params 431,080 (431.08K) exceed the limit 100,000"
            " (--max 100K)\n") in res.stderr
    assert sorted(p.name for p in work.iterdir()) == sorted(SOURCES)  # no report, no temporary file
