"""Benchmark: ``dnntool test`` against a bare ONNX Runtime session, and featuremap-dump of GoogLeNet.

1. ``test`` throughput. For each net (a LeNet on 28x28 digits, batch 64; CIFAR-10 quick on 32x32
   colour images with a mean file, batch 100) it builds an LMDB, fills weights from the fillers and
   measures, in the same run and alternating:

   * ours: ``evaluate()`` (what ``dnntool test`` calls): LMDB reads, Datum decoding and the Caffe
     transform in the background feeder, the session, per-output accumulation; images/s over the
     scoring loop (session creation excluded);
   * bare: an ``onnxruntime.InferenceSession`` on the same translated model with the same session
     options, fed the same batches made beforehand, doing nothing else.

   Overhead = ours / bare - 1: the median of the ratios of back-to-back pairs, and best against
   best (target: at most 10%). The data pipeline's own CPU time per batch (measured alone, in one
   thread) is printed beside the bare session's time per batch: it bounds what prefetching costs
   when the session already uses every core, and does not depend on the machine's load.

2. ``dnntool featuremap-dump`` of every blob of GoogLeNet (BVLC deploy prototxt, filler weights)
   for one image, as a whole process (target: under 2 s), plus the bare process start and imports.

Usage: python benchmarks/inference.py [--repeat 5] [--iterations 100] [--zoo ../shared/zoo] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DATA = """
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
  transform_param {{ {transform} }}
  data_param {{ source: "{source}" batch_size: {batch} backend: LMDB }} }}
"""

LENET = """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 20 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 50 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool2" top: "ip1"
  inner_product_param { num_output: 500 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 10 weight_filler { type: "xavier" } } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""

CIFAR = """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 32 pad: 2 kernel_size: 5 weight_filler { type: "gaussian" std: 0.0001 } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "pool1" top: "pool1" }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 32 pad: 2 kernel_size: 5 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "conv3" type: "Convolution" bottom: "pool2" top: "conv3"
  convolution_param { num_output: 64 pad: 2 kernel_size: 5 weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }
layer { name: "pool3" type: "Pooling" bottom: "conv3" top: "pool3" pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool3" top: "ip1"
  inner_product_param { num_output: 64 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 10 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""


def write_db(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    import lmdb

    from dnntool.proto import caffe_pb2

    env = lmdb.open(str(path), map_size=1 << 30)
    with env.begin(write=True) as txn:
        for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
            c, h, w = img.shape
            d = caffe_pb2.Datum(channels=c, height=h, width=w, label=int(lab), data=img.tobytes())
            txn.put(f"{i:08d}_{i}.png".encode(), d.SerializeToString())
    env.close()


def make_case(work: Path, name: str) -> tuple[Path, Path]:
    """(prototxt, caffemodel) for a benchmark net with its LMDB (and mean file)."""
    from dnntool.io.blob import write_binaryproto
    from dnntool.net import Net
    from dnntool.tools.export import init_weights_file

    rng = np.random.default_rng(0)
    db = work / f"{name}_lmdb"
    if name == "lenet":
        import cv2
        from sklearn.datasets import load_digits

        d = load_digits()
        x = np.stack([cv2.resize(np.clip(im * 16, 0, 255).astype(np.uint8), (28, 28)) for im in d.images])[:, None]
        write_db(db, x, d.target)
        text = 'name: "lenet"\n' + DATA.format(transform="scale: 0.00390625", source=db, batch=64) + LENET
    else:
        x = rng.integers(0, 256, (2000, 3, 32, 32), dtype=np.uint8)
        write_db(db, x, rng.integers(0, 10, len(x)))
        write_binaryproto(work / "mean.binaryproto", x.mean(axis=0, dtype=np.float64)[None].astype(np.float32))
        text = 'name: "cifar10_quick"\n' + DATA.format(
            transform=f'mean_file: "{work / "mean.binaryproto"}"', source=db, batch=100) + CIFAR
    net_path = work / f"{name}.prototxt"
    net_path.write_text(text)
    weights = work / f"{name}.caffemodel"
    init_weights_file(Net.from_prototxt(net_path), weights, seed=1)
    return net_path, weights


def bare_loop(net_path: Path, weights: Path, iterations: int, device: str) -> tuple[float, str]:
    """Seconds for ``iterations`` runs of a bare session over pre-made batches (the same batches)."""
    import onnxruntime as ort

    from dnntool.data.feeder import feeder_for_layer
    from dnntool.net import Net
    from dnntool.onnxgraph.runtime import Device, providers_for
    from dnntool.tools.export import translate

    net = Net.from_prototxt(net_path)
    tr = translate(net, weights, extra_loss=True)
    layer = next(layer for layer in net.layers if layer.impl.is_data)
    with feeder_for_layer(layer, str(net_path), prefetch=0) as f:
        batches = [f.next() for _ in range(iterations)]
    feeds = [{"data": b.data, "label": b.label} for b in batches]
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(tr.model.SerializeToString(), sess_options=opts,
                                providers=providers_for(Device.parse(device)))
    names = list(tr.outputs)
    t = time.perf_counter()
    for fd in feeds:
        sess.run(names, fd)
    return time.perf_counter() - t, sess.get_providers()[0]


def ours_loop(net_path: Path, weights: Path, iterations: int, device: str) -> tuple[float, float]:
    """(scoring-loop seconds, whole evaluate() call seconds) of what ``dnntool test`` runs."""
    from dnntool.tools.evaluate import evaluate

    t = time.perf_counter()
    res = evaluate(net_path, weights, iterations, device)
    return res.seconds, time.perf_counter() - t


def pipeline_cpu_ms(net_path: Path, batches: int = 200) -> float:
    """CPU ms per batch of the data pipeline alone (read, decode, transform), in this thread."""
    from dnntool.data.feeder import feeder_for_layer
    from dnntool.net import Net

    net = Net.from_prototxt(net_path)
    layer = next(layer for layer in net.layers if layer.impl.is_data)
    with feeder_for_layer(layer, str(net_path), prefetch=0) as f:
        f.next()
        t = time.process_time()
        for _ in range(batches):
            f.next()
        return (time.process_time() - t) / batches * 1e3


def bench_test(work: Path, repeat: int, iterations: int, device: str) -> list[dict]:
    rows = []
    for name in ("lenet", "cifar10_quick"):
        net_path, weights = make_case(work, name)
        batch = 64 if name == "lenet" else 100
        bare_loop(net_path, weights, 5, device)  # warm caches and the ORT libraries
        ours_loop(net_path, weights, 5, device)
        bare, ours, whole = [], [], []
        provider = ""
        for _ in range(repeat):  # alternate so both see the same machine load
            b, provider = bare_loop(net_path, weights, iterations, device)
            o, w = ours_loop(net_path, weights, iterations, device)
            bare.append(b)
            ours.append(o)
            whole.append(w)
        images = iterations * batch
        mb, mo = statistics.median(bare), statistics.median(ours)
        # each ours/bare pair ran back to back: the median of the paired ratios cancels slow load drift
        paired = statistics.median(o / b for o, b in zip(ours, bare, strict=True)) - 1
        rows.append({"net": name, "batch": batch, "iterations": iterations, "provider": provider,
                     "bare_ips": images / mb, "ours_ips": images / mo, "overhead": paired,
                     "best": min(ours) / min(bare) - 1, "whole_s": statistics.median(whole),
                     "bare_ms": mb / iterations * 1e3, "pipe_ms": pipeline_cpu_ms(net_path)})
    return rows


def bench_featuremaps(work: Path, zoo: Path, repeat: int, device: str) -> dict | None:
    prototxt = zoo / "bvlc/models/bvlc_googlenet/deploy.prototxt"
    if not prototxt.exists():
        return None
    import cv2

    from dnntool.net import Net
    from dnntool.tools.export import init_weights_file

    weights = work / "googlenet.caffemodel"
    init_weights_file(Net.from_prototxt(prototxt), weights, seed=0)
    image = zoo / "opencv_extra/testdata/dnn/googlenet_0.jpg"
    if not image.exists():
        image = work / "image.jpg"
        cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    cmd = [sys.executable, "-m", "dnntool", "featuremap-dump", "--model", str(prototxt), "--weights", str(weights),
           "--image", str(image), "--mean", "104,117,123", "--blobs", "all", "--out", str(work / "maps"),
           "--device", device, "-q"]
    subprocess.run(cmd, check=True)  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, check=True)
        times.append(time.perf_counter() - t)
    start = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import dnntool.cli, onnxruntime, onnx, cv2, numpy"], check=True)
        start.append(time.perf_counter() - t)
    blobs = len([p for p in (work / "maps").iterdir() if p.suffix == ".npy"])
    return {"seconds": statistics.median(times), "imports_s": statistics.median(start), "blobs": blobs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--zoo", type=Path, default=Path(os.environ.get("DNNTOOL_ZOO", REPO.parent / "shared" / "zoo")))
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = bench_test(work, args.repeat, args.iterations, args.device)
        fm = bench_featuremaps(work, args.zoo, args.repeat, args.device)
    print(f"## dnntool test vs a bare onnxruntime session (median of {args.repeat}, {os.cpu_count()} CPUs)\n")
    print("| net | batch x iterations | provider | bare session img/s | dnntool test img/s | overhead"
          " (median of paired ratios) | overhead (best vs best) | bare ms/batch | pipeline CPU ms/batch |"
          " whole call s |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['net']} | {r['batch']} x {r['iterations']} | {r['provider']} | {r['bare_ips']:,.0f} |"
              f" {r['ours_ips']:,.0f} | {r['overhead']:+.1%} | {r['best']:+.1%} | {r['bare_ms']:.2f} |"
              f" {r['pipe_ms']:.3f} | {r['whole_s']:.2f} |")
    if fm is None:
        print("\nfeaturemap-dump: skipped (no zoo)")
    else:
        print(f"\nfeaturemap-dump, GoogLeNet, every blob ({fm['blobs']}), one image, whole process:"
              f" {fm['seconds']:.2f} s (of which process start + imports {fm['imports_s']:.2f} s)")


if __name__ == "__main__":
    main()
