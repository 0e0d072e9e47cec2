"""Benchmark: forward speed (ONNX Runtime) before and after each slimming transform.

Nets: ResNet-50 and MobileNet v1 deploy prototxts from the zoo with random weights (speed does not
depend on the values; BatchNorm statistics are consistent), batch 1, and the LeNet-style BatchNorm
net trained here on scikit-learn's digits (tests/slim/digits_bn.py), batch 100, whose test accuracy
is reported too. Transforms, through the same library calls as the commands:

* fold-bn;
* prune --structured --ratio 0.3 (ResNet-50: every res*_branch2a/2b; MobileNet: every pointwise
  ``conv*/sep`` but the last; digits: conv1, conv2, ip1);
* quantize --dtype fp16 and --dtype int8 --per-channel (calibrated on 8 batches: random N(0, 1) inputs for
  the zoo nets, the training LMDB for digits);
* decompose (ResNet-50 fc1000 rank 256; digits ip1 rank 16).

Each row gives the median ms per batch of the original and the result on the same batches (the
report's own timing), the speed-up, and how far the score blob moved (max |diff| / max |original|)
or the accuracy. Prints a Markdown section for benchmarks/RESULTS.md.

Usage: python benchmarks/slim.py [--zoo ../shared/zoo] [--repeat 5] [--batches 3] [--nets resnet50,...]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ZOO_DEFAULT  # benchmarks/common.py

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dnntool.io.caffemodel import save_caffemodel
from dnntool.net import Net

ZOO = {"resnet50": "resnet/prototxt/ResNet-50-deploy.prototxt",
       "mobilenet": "mobilenet_caffe/mobilenet_deploy.prototxt"}
SCORE = {"resnet50": "fc1000", "mobilenet": "fc7", "digits": "ip2"}


def random_weights(net: Net, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """He-scaled weights, BatchNorm statistics near (0, 1), Scale near 1."""
    rng = np.random.default_rng(seed)
    out = {}
    for layer in net.layers:
        arrays = []
        for p in layer.params:
            role, shape = p.blob.role, p.shape
            if role == "mean":
                a = rng.normal(0, 0.1, shape)
            elif role in ("variance", "scale"):
                a = rng.uniform(0.5, 1.5, shape)
            elif role == "scale_factor":
                a = np.ones(shape)
            elif role == "bias":
                a = rng.normal(0, 0.1, shape)
            else:
                a = rng.normal(0, np.sqrt(2.0 / max(1, int(np.prod(shape[1:])))), shape)
            arrays.append(a.astype(np.float32))
        if arrays:
            out[layer.name] = arrays
    return out


def zoo_net(tmp: Path, zoo: Path, name: str):
    proto = zoo / ZOO[name]
    net = Net.from_prototxt(proto, "test")
    weights = tmp / f"{name}.caffemodel"
    save_caffemodel(weights, [layer.param for layer in net.layers], random_weights(net), name=net.name)
    db = tmp / f"{name}_calib_lmdb"
    from tests.data.digits import write_lmdb

    c, h, w = net.blobs[net.input_names()[0]].shape[1:]
    imgs = np.random.default_rng(1).standard_normal((8, c, h, w)).astype(np.float32)  # already "preprocessed"
    write_lmdb(db, imgs, np.zeros(8, np.int64), floats=True)
    if name == "resnet50":
        cut = [x.name for x in net.layers if x.type == "Convolution" and x.name.endswith(("branch2a", "branch2b"))]
        fc = (["fc1000"], 256)
    else:
        cut = [x.name for x in net.layers if x.type == "Convolution" and x.name.endswith("/sep")][:-1]
        fc = None
    return proto, weights, db, cut, fc, None


def digits_net(tmp: Path):
    from tests.slim.digits_bn import train

    (tmp / "digits").mkdir()
    t = train(tmp / "digits")
    return t.net, t.weights, t.train_db, ["conv1", "conv2", "ip1"], (["ip1"], 16), t.test_db


def score_move(a: list, written: list[str], blob: str, db) -> str:
    """max |diff| / max |original| of the score blob (before any Softmax) on the same inputs."""
    from dnntool.slim.compare import compare

    b = written if not written[0].endswith(".onnx") else written[:1]
    res = compare([str(x) for x in a], b, db=str(db) if db else None, batches=2, blobs=[blob], device="cpu")
    return f"score moved {res.rows[0].diff.max_rel:.2g}"


def run(name: str, spec, out: Path, batches: int, repeat: int) -> list[list[str]]:
    from dnntool.slim.decompose import decompose_files
    from dnntool.slim.fold_bn import fold_bn_files
    from dnntool.slim.prune import accuracy_metric, prune_files, score
    from dnntool.slim.quantize import quantize_files

    proto, weights, calib, cut, fc, test_db = spec
    data = test_db or calib  # real records for the zoo nets too, so int8 sees what it was calibrated on
    kw = {"batches": batches, "repeat": repeat, "db": str(data)}
    blob = SCORE[name]
    rows = []

    def row(label, rep, quality):
        b, a = rep.before, rep.after
        rows.append([name, label, f"{b.params:,} -> {a.params:,}", f"{b.macs / 1e6:,.1f} -> {a.macs / 1e6:,.1f}",
                     f"{b.bytes / 1e6:.2f} -> {a.bytes / 1e6:.2f}", f"{b.ms:.2f}", f"{a.ms:.2f}",
                     f"{b.ms / a.ms:.2f}x", quality])

    def acc(net_path, w) -> str:
        if test_db is None:
            return ""
        net = Net.from_prototxt(net_path, "test")
        return f"acc {score(net, str(w), 4, accuracy_metric(net), 'cpu'):.4f}"

    base = acc(proto, weights)
    rep = fold_bn_files(proto, weights, out / f"{name}_folded", **kw)
    row("fold-bn", rep, " ".join(x for x in (score_move([proto, weights], rep.written, blob, data),
                                              acc(rep.written[0], rep.written[1])) if x))
    rep = prune_files(proto, weights, out / f"{name}_pruned", structured=True, ratio=0.3, layers=cut, **kw)
    row(f"prune 0.3 ({len(cut)} layers)", rep, " ".join(x for x in (acc(rep.written[0], rep.written[1]),
                                                                   "(no fine-tuning)") if x))
    for dtype, extra in (("fp16", {}), ("int8", {"calib_db": str(calib), "calib_batches": 8, "per_channel": True})):
        rep = quantize_files(proto, weights, out / f"{name}_{dtype}.onnx", dtype, test_db=str(test_db) if test_db else None,
                             **extra, **kw)
        q = next((f"acc {r[2]:.4f}" for r in rep.rows if r[0] == "accuracy"), "")
        row(dtype, rep, " ".join(x for x in (score_move([proto, weights], rep.written, blob, data), q) if x))
    if fc is not None:
        rep = decompose_files(proto, weights, out / f"{name}_svd", fc[0], rank=fc[1], **kw)
        row(f"decompose {','.join(fc[0])} r{fc[1]}", rep, " ".join(
            x for x in (score_move([proto, weights], rep.written, blob, data), acc(rep.written[0], rep.written[1]))
            if x))
    if base:
        rows.insert(0, [name, "(float)", "", "", "", "", "", "", base])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default=ZOO_DEFAULT)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--nets", default="resnet50,mobilenet,digits")
    args = ap.parse_args()
    names = [n.strip() for n in args.nets.split(",") if n.strip()]
    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dnntool-bench-slim-") as d:
        tmp = Path(d)
        for name in names:
            if name == "digits":
                spec = digits_net(tmp)
            elif Path(args.zoo, ZOO[name]).exists():
                spec = zoo_net(tmp, Path(args.zoo), name)
            else:
                print(f"skipping {name}: {Path(args.zoo, ZOO[name])} not found", file=sys.stderr)
                continue
            rows += run(name, spec, tmp, args.batches, args.repeat)
    import onnxruntime

    print("## Slimming\n")
    print(f"`python benchmarks/slim.py --repeat {args.repeat} --batches {args.batches}` on {platform.processor() or platform.machine()},"
          f" {os.cpu_count()} cores, onnxruntime {onnxruntime.__version__} CPU; median ms per batch over the same"
          f" {args.batches} batches (ResNet-50/MobileNet: batch 1, random weights, random N(0, 1) 224x224 inputs from an LMDB of float Datums;"
          f" digits: batch 100 of its test LMDB); {time.perf_counter() - t0:.0f} s in all.\n")
    print("| net | transform | params | MMACs | MB | ms before | ms after | speed-up | quality |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
