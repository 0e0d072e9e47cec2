"""Benchmark: training iterations per second, ``dnntool``'s loop against a PyTorch eager replica.

For LeNet (batch 64, 1x28x28) and CIFAR10-quick (batch 100, 3x32x32), in the same run:

* dnntool: ``dnntool.train.loop.train`` (SGD with momentum and weight decay, data from in-memory
  arrays through the loop's feeder), iterations per second after a warm-up;
* PyTorch: the same net, batch and solver in eager mode (torch.optim.SGD), the same thread count;
  skipped with a message when torch is not installed;

then the backward kernels that dominate one training step (ONNX Runtime's profiler, as
``dnntool time`` reports them). With ``--repeat R`` both are run R times, alternating, and the best
of each is kept (on a shared machine other work only ever slows a run down), and each round's
pair is listed; the load average is printed before and after.

Usage: python benchmarks/train.py [--iters 30] [--warmup 5] [--repeat 1] [--threads N] [--top 6]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from google.protobuf import text_format

from dnntool.net import Net
from dnntool.proto import caffe_pb2
from dnntool.train.loop import train
from dnntool.train.timing import time_net

LENET = (Path(__file__).resolve().parents[1] / "samples" / "lenet_train_input.prototxt").read_text()

# Caffe's examples/cifar10/cifar10_quick_train_test.prototxt with an Input layer
CIFAR_QUICK = """
name: "CIFAR10_quick"
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 100 dim: 3 dim: 32 dim: 32 } shape { dim: 100 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 32 pad: 2 kernel_size: 5 weight_filler { type: "gaussian" std: 0.0001 } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "pool1" top: "pool1" }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2" param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 32 pad: 2 kernel_size: 5 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "conv3" type: "Convolution" bottom: "pool2" top: "conv3" param { lr_mult: 1 } param { lr_mult: 2 }
  convolution_param { num_output: 64 pad: 2 kernel_size: 5 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }
layer { name: "pool3" type: "Pooling" bottom: "conv3" top: "pool3" pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool3" top: "ip1" param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 64 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2" param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 10 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""

NETS = {"LeNet": (LENET, (64, 1, 28, 28)), "CIFAR10-quick": (CIFAR_QUICK, (100, 3, 32, 32))}


def data(shape, batches: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = shape[0] * batches
    return {"data": rng.normal(size=(n, *shape[1:])).astype(np.float32),
            "label": rng.integers(0, 10, n).astype(np.float32)}


def ours(text: str, shape, iters: int, warmup: int, threads: int | None) -> float:
    """Iterations per second of ``train`` after ``warmup`` iterations."""
    sp = caffe_pb2.SolverParameter(base_lr=0.001, momentum=0.9, weight_decay=0.004, lr_policy="fixed",
                                   max_iter=warmup + iters, snapshot_after_train=False, random_seed=0)
    text_format.Parse(text, sp.net_param)
    stamps: dict[int, float] = {}
    train(sp, device="cpu", data=data(shape), threads=threads, handle_signals=False,
          progress=lambda done, total: stamps.__setitem__(done, time.perf_counter()))
    return iters / (stamps[warmup + iters] - stamps[warmup])


def torch_replica(name: str):
    import torch
    from torch import nn

    if name == "LeNet":
        return nn.Sequential(
            nn.Conv2d(1, 20, 5), nn.MaxPool2d(2, 2, ceil_mode=True), nn.Conv2d(20, 50, 5),
            nn.MaxPool2d(2, 2, ceil_mode=True), nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10))
    return nn.Sequential(
        nn.Conv2d(3, 32, 5, padding=2), nn.MaxPool2d(3, 2, ceil_mode=True), nn.ReLU(),
        nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(), nn.AvgPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.AvgPool2d(3, 2, ceil_mode=True), nn.Flatten(),
        nn.Linear(64 * 4 * 4, 64), nn.Linear(64, 10), torch.nn.Identity())


def theirs(name: str, shape, iters: int, warmup: int, threads: int | None) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    if threads:
        torch.set_num_threads(threads)
    model = torch_replica(name)
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, weight_decay=0.004)
    d = data(shape)
    xs = torch.tensor(d["data"]).split(shape[0])
    ys = torch.tensor(d["label"]).long().split(shape[0])
    t0 = 0.0
    for i in range(warmup + iters):
        if i == warmup:
            t0 = time.perf_counter()
        k = i % len(xs)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xs[k]), ys[k]).backward()
        opt.step()
    return iters / (time.perf_counter() - t0)


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=1, help="Runs of each, alternating; the best is kept.")
    ap.add_argument("--threads", type=int, default=None, help="Threads for both (default: all cores).")
    ap.add_argument("--top", type=int, default=6, help="Backward kernels to name per net.")
    args = ap.parse_args()
    print(f"{os.cpu_count()} cores; threads: {args.threads or 'default'}; load average before: {load()}")
    print(f"{'net':<14} {'batch':>5} {'dnntool it/s':>13} {'PyTorch it/s':>13} {'ratio':>7}")
    rows, rounds = [], {}
    for name, (text, shape) in NETS.items():
        mine, torch_ = [], []
        for _ in range(max(1, args.repeat)):
            mine.append(ours(text, shape, args.iters, args.warmup, args.threads))
            t = theirs(name, shape, args.iters, args.warmup, args.threads)
            if t is not None:
                torch_.append(t)
        a, b = max(mine), max(torch_) if torch_ else None
        rows.append((name, text, shape))
        rounds[name] = (mine, torch_)
        tb = f"{b:13.1f}" if b else f"{'-':>13}"
        ratio = f"{a / b:6.2f}x" if b else f"{'-':>7}"
        print(f"{name:<14} {shape[0]:>5} {a:13.1f} {tb} {ratio}")
    print(f"load average after: {load()}")
    if args.repeat > 1:  # each round's pair, run back to back: how much the machine moved meanwhile
        print("rounds (dnntool / PyTorch it/s, ratio):")
        for name, (mine, torch_) in rounds.items():
            ratios = [m / t for m, t in zip(mine, torch_, strict=False)]
            pairs = [f"{m:.1f}/{t:.1f} {r:.2f}x" for m, t, r in zip(mine, torch_, ratios, strict=False)]
            median = f"; median {float(np.median(ratios)):.2f}x" if ratios else ""
            print(f"  {name:<14} " + ", ".join(pairs or [f"{m:.1f}" for m in mine]) + median)
    try:
        import torch  # noqa: F401
    except ImportError:
        print("PyTorch is not installed: its column is skipped (pip install torch)")
    for name, text, _ in rows:
        net = Net.from_param(text_format.Parse(text, caffe_pb2.NetParameter()), "train")
        res = time_net(net, 10, "cpu", "train", args.threads)
        back = [n for n in res.nodes if n.backward][: args.top]
        print(f"\n{name}: forward {res.forward_ms:.1f} ms, backward {res.backward_ms:.1f} ms of kernels,"
              f" {res.wall_ms:.1f} ms per step (gradient model); slowest backward kernels:")
        for n in back:
            share = 100 * n.ms / max(res.backward_ms, 1e-9)
            print(f"  {n.ms:7.2f} ms {share:5.1f}%  {n.op:<14} {n.node}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
