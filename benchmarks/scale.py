"""Benchmark: data-parallel training over MPI, CIFAR10-quick with 1 and 2 ranks on this machine.

Each configuration is a real ``mpiexec -n R`` job of this script in worker mode, training
CIFAR10-quick (batch 100 per rank, SGD with momentum, data from in-memory arrays, each rank taking
its own batches) through ``dnntool.train.loop.train``; rank 0 reports iterations/s after a
warm-up, images/s (R x 100 per iteration) and the share of its step time spent in the gradient
Allreduce (waiting for the slower rank included). Configurations, interleaved over ``--repeat``
rounds (best of each reported):

* 1 rank, all cores' threads (the single-process baseline);
* 1 rank, cores / 2 threads (what one rank gets when 2 share the machine);
* 2 ranks, cores / 2 threads each.

Usage: python benchmarks/scale.py [--iters 30] [--warmup 5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from google.protobuf import text_format

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import CIFAR_QUICK, data

from dnntool.proto import caffe_pb2
from dnntool.train import dist
from dnntool.train.loop import train

SHAPE = (100, 3, 32, 32)


def worker(iters: int, warmup: int, threads: int, out: str) -> None:
    sp = caffe_pb2.SolverParameter(base_lr=0.001, momentum=0.9, weight_decay=0.004, lr_policy="fixed",
                                   max_iter=warmup + iters, snapshot_after_train=False, random_seed=0)
    text_format.Parse(CIFAR_QUICK, sp.net_param)
    stamps: dict[int, float] = {}
    res = train(sp, device="cpu", data=data(SHAPE), threads=threads, handle_signals=False,
                progress=lambda done, total: stamps.__setitem__(done, time.perf_counter()))
    if dist.launched_rank() == 0:
        rate = iters / (stamps[warmup + iters] - stamps[warmup])
        Path(out).write_text(json.dumps({
            "ranks": res.ranks, "threads": threads, "it_per_s": rate, "images_per_s": rate * res.ranks * SHAPE[0],
            "allreduce_share": res.allreduce_seconds / res.seconds, "seconds": res.seconds}))


def job(ranks: int, threads: int, iters: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r.json")
        cmd = [dist.mpiexec(), "-n", str(ranks), sys.executable, __file__, "--worker", "--iters", str(iters),
               "--warmup", str(warmup), "--threads", str(threads), "--out", out]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return json.loads(Path(out).read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.iters, args.warmup, args.threads, args.out)
        return 0
    cores = os.cpu_count() or 1
    configs = [(1, cores), (1, max(1, cores // 2)), (2, max(1, cores // 2))]
    best: dict[tuple[int, int], dict] = {}
    load0 = os.getloadavg()[0]
    for _ in range(args.repeat):
        for ranks, threads in configs:
            r = job(ranks, threads, args.iters, args.warmup)
            if (ranks, threads) not in best or r["it_per_s"] > best[(ranks, threads)]["it_per_s"]:
                best[(ranks, threads)] = r
    base = best[configs[0]]["images_per_s"]
    print(f"CIFAR10-quick, batch {SHAPE[0]} per rank, {cores} cores, {args.iters} timed iterations,"
          f" best of {args.repeat}; load average {load0:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(f"{'ranks':>5} {'threads/rank':>12} {'it/s':>7} {'images/s':>9} {'vs 1 rank':>9} {'Allreduce':>9}")
    for ranks, threads in configs:
        r = best[(ranks, threads)]
        share = f"{100 * r['allreduce_share']:8.1f}%" if ranks > 1 else f"{'-':>9}"
        print(f"{ranks:>5} {threads:>12} {r['it_per_s']:7.2f} {r['images_per_s']:9.0f}"
              f" {r['images_per_s'] / base:8.2f}x {share}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
