"""The demo pipeline on scikit-learn's digits: the library half of ``dnntool demo``.

digits -> PNG files and list files -> convert-images (train/test LMDBs) -> compute-image-mean ->
param-count/flops with CI limits -> netscope -> train a LeNet with BatchNorm -> test ->
featuremap-dump -> fold-bn -> prune (structured) the folded net and fine-tune it -> quantize the
folded net to int8 and fp16 -> test each model on the held-out digits.
Every step calls the library function its command uses; everything is seeded, so a second run into
the same folder writes the same bytes (the timing figures in ``summary.json`` aside).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dnntool.errors import ThresholdExceeded
from dnntool.io.atomic import write_text
from dnntool.samples import sample

SEED = 0
SIZE = 28  # the 8x8 digits are upscaled to LeNet's 28x28
TEST_FRACTION = 0.2
LIMITS = {"params": 100_000, "macs": 2_000_000}  # per image, as a CI size check would set them
PRUNE_LAYERS = ["conv1", "conv2", "ip1"]
PRUNE_RATIO = 0.25
ITERATIONS = 240
FAST_ITERATIONS = 150
FINETUNE_ITERATIONS = 100
FINETUNE_LR = 0.01


@dataclass
class ModelRow:
    """One line of the closing table."""

    model: str
    path: str
    accuracy: float
    params: int
    macs: int
    bytes: int
    ms: float  # per batch of ``batch`` images (evaluate's scoring loop)
    batch: int

    def to_dict(self) -> dict:
        return {"model": self.model, "path": self.path, "accuracy": round(self.accuracy, 6),
                "params": self.params, "macs": self.macs, "bytes": self.bytes, "ms_per_batch": round(self.ms, 3),
                "batch": self.batch}


@dataclass
class DemoResult:
    """What the demo wrote: every artifact (in order), the table rows, and the timing-dependent files."""

    out: str
    artifacts: list[str] = field(default_factory=list)
    models: list[ModelRow] = field(default_factory=list)
    timed: list[str] = field(default_factory=list)  # artifacts holding measured times (not reproducible)

    def table(self) -> list[str]:
        from dnntool.slim.report import format_table
        from dnntool.tools.stats import human

        batch = self.models[0].batch if self.models else 0
        cells = [["model", "accuracy", "params", "MACs", "file", f"ms/batch ({batch})"]]
        cells += [[m.model, f"{100 * m.accuracy:.2f}%", f"{m.params:,}", human(m.macs), _size(m.bytes),
                   f"{m.ms:.2f}"] for m in self.models]
        return format_table(cells)


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MiB"


# -- steps ---------------------------------------------------------------------------------------------
def write_digit_images(out: Path, seed: int = SEED) -> tuple[Path, Path, int, int]:
    """scikit-learn's 1797 digits as 28x28 grey PNGs under ``out/images/<class>/``, and the
    ``train.txt``/``test.txt`` lists (``path label``, a seeded stratified 80/20 split)."""
    import cv2
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    root = out / "images"
    names = []
    for i, (img, label) in enumerate(zip(d.images, d.target, strict=True)):
        rel = f"{int(label)}/{i:04d}.png"
        (root / str(int(label))).mkdir(parents=True, exist_ok=True)
        pixels = np.round(img * 255 / 16).astype(np.uint8)
        big = cv2.resize(pixels, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
        ok, buf = cv2.imencode(".png", big)
        assert ok
        _write_if_changed(root / rel, buf.tobytes())
        names.append((rel, int(label)))
    idx = np.arange(len(names))
    tr, te = train_test_split(idx, test_size=TEST_FRACTION, random_state=seed, stratify=d.target)
    lists = []
    for what, part in (("train", tr), ("test", te)):
        path = out / f"{what}.txt"
        write_text(path, "".join(f"{names[i][0]} {names[i][1]}\n" for i in part))
        lists.append(path)
    return root, lists[0], lists[1], len(te)


def _write_if_changed(path: Path, data: bytes) -> None:
    from dnntool.io.atomic import write_bytes

    if not (path.exists() and path.read_bytes() == data):
        write_bytes(path, data)


def _lmdb(root: Path, listfile: Path, db: Path, seed: int):
    from dnntool.tools.images import ConvertOptions, convert_images

    opts = ConvertOptions(gray=True, shuffle=True, seed=seed, strict=True, overwrite=True, jobs=1)
    return convert_images(root, listfile, db, opts)


def _fill_net(out: Path, train_db: Path, test_db: Path, mean: Path, test_batch: int) -> Path:
    """The LeNet template with this run's (absolute) database and mean paths and TEST batch."""
    from dnntool.io.prototxt import read_net, write_prototxt

    src = read_net(sample("digits_lenet_bn.prototxt"))
    for lp in src.param.layer:
        if lp.type != "Data":
            continue
        test = any(r.phase == 1 for r in lp.include)  # caffe_pb2.TEST
        lp.data_param.source = str(test_db if test else train_db)
        lp.transform_param.mean_file = str(mean)
        if test:
            lp.data_param.batch_size = test_batch
    path = out / "lenet_train_test.prototxt"
    write_prototxt(src.param, path)
    return path


def _fill_solver(out: Path, net: Path, iterations: int, name: str = "lenet", base_lr: float | None = None) -> Path:
    """The solver template training ``net`` for ``iterations``, snapshots as ``out/<name>_iter_N``."""
    from dnntool.io.prototxt import read_solver, write_prototxt

    sp = read_solver(sample("digits_solver.prototxt"))
    sp.net = str(net)
    sp.max_iter = iterations
    sp.test_interval = iterations
    sp.snapshot_prefix = str(out / name)
    if base_lr is not None:
        sp.base_lr = base_lr
    path = out / f"{name}_solver.prototxt"
    write_prototxt(sp, path)
    return path


def _accuracy(res) -> float:
    return next(s.values[0] for s in res.scores if s.name == "accuracy")


def _counts(proto: Path) -> tuple[int, int]:
    """Params and MACs per image of a prototxt's TEST net."""
    from dnntool.net import Net
    from dnntool.tools.stats import report

    rep = report(Net.from_prototxt(proto, "test", input_shapes={"data": (1, 1, SIZE, SIZE), "label": (1,)}))
    return rep.params, rep.macs


def run_demo(out_dir: str, echo: Callable[[str], None] = print, fast: bool = False,
             device: str = "cpu") -> DemoResult:
    """Run the pipeline into ``out_dir``; return the artifacts and the closing table's rows.

    Raises:
        ThresholdExceeded: the net's params or MACs exceed the demo's CI limits.
    """
    from dnntool.net import Net
    from dnntool.slim.fold_bn import fold_bn_files
    from dnntool.slim.prune import prune_files
    from dnntool.slim.quantize import quantize_files
    from dnntool.tools.evaluate import evaluate
    from dnntool.tools.featuremaps import dump_featuremaps
    from dnntool.tools.image_mean import compute_image_mean, write_mean
    from dnntool.tools.stats import human, report
    from dnntool.train.loop import train
    from dnntool.viz import write as draw

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    res = DemoResult(str(out))
    art = res.artifacts.append

    # 1. digits -> images and list files
    root, train_list, test_list, n_test = write_digit_images(out)
    art(str(root))
    art(str(train_list))
    art(str(test_list))
    echo(f"digits: 1797 scikit-learn digits -> {SIZE}x{SIZE} PNGs in {root},"
         f" {1797 - n_test} train / {n_test} test -> {train_list.name}, {test_list.name}")

    # 2. convert-images, compute-image-mean
    train_db, test_db, mean = out / "digits_train_lmdb", out / "digits_test_lmdb", out / "mean.binaryproto"
    for listfile, db in ((train_list, train_db), (test_list, test_db)):
        s = _lmdb(root, listfile, db, SEED)
        art(str(db))
        echo(f"convert-images: {s.dbs[0].written} records ({'x'.join(map(str, s.dbs[0].shape))}) -> {db}")
    m = compute_image_mean([str(train_db)], jobs=1)
    write_mean(m, str(mean))
    art(str(mean))
    echo(f"compute-image-mean: mean pixel {m.channel_mean[0]:.2f}, std {m.channel_std[0]:.2f} -> {mean}")

    # 3. param-count / flops with CI limits
    net_path = _fill_net(out, train_db, test_db, mean, n_test)
    art(str(net_path))
    one = {"data": (1, 1, SIZE, SIZE), "label": (1,)}
    rep = report(Net.from_prototxt(net_path, "test", input_shapes=one))
    costs = out / "lenet.costs.json"
    write_text(costs, json.dumps(rep.to_dict(), indent=2) + "\n")
    art(str(costs))
    for what, value in (("params", rep.params), ("macs", rep.macs)):
        if value > LIMITS[what]:
            raise ThresholdExceeded(f"{net_path}: {what} {value:,} exceed the demo limit {LIMITS[what]:,}")
    echo(f"param-count/flops: {rep.params:,} params, {human(rep.macs)} MACs, {human(rep.flops)} FLOPs per image"
         f" (--max {human(LIMITS['params'])} params, {human(LIMITS['macs'])} MACs: ok) -> {costs.name}")

    # 4. netscope
    html = out / "lenet.html"
    draw(Net.from_prototxt(net_path, "test", input_shapes=one), html)
    art(str(html))
    echo(f"netscope: {len(rep.rows)} layers drawn -> {html}")

    # 5. train
    iterations = FAST_ITERATIONS if fast else ITERATIONS
    solver = _fill_solver(out, net_path, iterations)
    art(str(solver))
    tr = train(solver, device=device, handle_signals=False, threads=1)
    model, state = tr.snapshots[-1]
    art(str(model))
    art(str(state))
    last = {o.name: o.value for o in tr.tests[-1].outputs} if tr.tests else {}
    echo(f"train: {tr.iteration} iterations in {tr.seconds:.1f} s, test accuracy"
         f" {100 * last.get('accuracy', float('nan')):.2f}% -> {Path(model).name}")

    # 6. test, featuremap-dump, fold-bn, prune, quantize; test each model
    def score(name: str, path: str, weights: str | None, counts_from: Path) -> ModelRow:
        r = evaluate(path, weights, iterations=1, device=device, data=str(net_path) if weights is None else None,
                     threads=1)
        params, macs = _counts(counts_from)
        row = ModelRow(name, weights or path, _accuracy(r), params, macs, os.path.getsize(weights or path),
                       1000 * r.seconds / r.iterations, r.batch_size)
        res.models.append(row)
        return row

    row = score("float", str(net_path), model, net_path)
    echo(f"test: accuracy {100 * row.accuracy:.2f}% on {row.batch} held-out images ({row.ms:.1f} ms)")

    maps = out / "featuremaps"
    first = test_list.read_text().split("\n", 1)[0].rsplit(" ", 1)[0]
    fm = dump_featuremaps(net_path, model, maps, ["conv1", "conv2", "ip2"], images=[str(root / first)],
                          device=device)
    art(str(maps / "index.json"))
    for b in fm.blobs:
        if b.png:
            art(str(maps / Path(b.png).name))
        art(str(maps / Path(b.data).name))
    echo(f"featuremap-dump: {first}: {', '.join(b.name for b in fm.blobs)} -> {maps}")

    folded = out / "lenet_folded"
    folded_net, folded_w = Path(f"{folded}.prototxt"), f"{folded}.caffemodel"
    frep = fold_bn_files(net_path, model, folded, batches=1, db=str(test_db), device=device, repeat=1)
    _slim_report(out, "fold_bn", frep, res)
    art(str(folded_net))
    art(folded_w)
    worst = max((d.max_rel for d in frep.output_diff.values()), default=0.0)
    row = _caffe_row("fold-bn", folded, device, res)
    echo(f"fold-bn: {frep.extra.get('folded', 0)} BatchNorm folded, max relative output change {worst:.1e},"
         f" accuracy {100 * row.accuracy:.2f}% -> {folded.name}.prototxt/.caffemodel")

    # pruning the folded net: the filters are ranked with the BatchNorm scale in their weights, and
    # the fine-tuning below trains plain layers (no BatchNorm statistics left stale by the cut)
    pruned = out / "lenet_pruned"
    pruned_net, pruned_w = Path(f"{pruned}.prototxt"), f"{pruned}.caffemodel"
    prep = prune_files(folded_net, folded_w, pruned, structured=True, ratio=PRUNE_RATIO, layers=PRUNE_LAYERS,
                       batches=0, device=device)
    _slim_report(out, "prune", prep, res)
    art(str(pruned_net))
    art(pruned_w)
    row = _caffe_row("pruned", pruned, device, res)
    echo(f"prune: {int(100 * PRUNE_RATIO)}% of the filters of {', '.join(PRUNE_LAYERS)} removed"
         f" ({prep.before.params:,} -> {prep.after.params:,} params, no fine-tuning), accuracy"
         f" {100 * row.accuracy:.2f}% -> {pruned.name}.prototxt/.caffemodel")

    ft_solver = _fill_solver(out, pruned_net, FINETUNE_ITERATIONS, "lenet_pruned_ft", FINETUNE_LR)
    art(str(ft_solver))
    ft = train(ft_solver, weights=pruned_w, device=device, handle_signals=False, threads=1)
    ft_model, ft_state = ft.snapshots[-1]
    art(str(ft_model))
    art(str(ft_state))
    ft_prefix = Path(ft_model).with_suffix("")
    row = _caffe_row("pruned + fine-tune", ft_prefix, device, res, pruned_net)
    echo(f"train (fine-tune the pruned net): {ft.iteration} iterations in {ft.seconds:.1f} s, accuracy"
         f" {100 * row.accuracy:.2f}% -> {Path(ft_model).name}")

    for dtype in ("int8", "fp16"):
        onnx_path = out / f"lenet_{dtype}.onnx"
        calib = {"calib_db": str(train_db), "calib_batches": 2} if dtype == "int8" else {}
        qrep = quantize_files(folded_net, folded_w, onnx_path, dtype, batches=0, device=device, **calib)
        _slim_report(out, f"quantize_{dtype}", qrep, res)
        art(str(onnx_path))
        row = score(dtype, str(onnx_path), None, folded_net)
        echo(f"quantize {dtype}: {_size(qrep.before.bytes)} -> {_size(qrep.after.bytes)}, accuracy"
             f" {100 * row.accuracy:.2f}% -> {onnx_path.name}")

    # 7. the table
    summary = out / "summary.json"
    write_text(summary, json.dumps({"models": [m.to_dict() for m in res.models]}, indent=2) + "\n")
    art(str(summary))
    res.timed.append(str(summary))
    return res


def _slim_report(out: Path, name: str, rep, res: DemoResult) -> None:
    path = out / f"{name}.report.json"
    write_text(path, json.dumps(rep.to_dict(), indent=2) + "\n")
    res.artifacts.append(str(path))
    if rep.before.ms is not None or rep.after.ms is not None:
        res.timed.append(str(path))


def _caffe_row(name: str, prefix: Path, device: str, res: DemoResult, proto: Path | None = None) -> ModelRow:
    """Score PREFIX.caffemodel with PREFIX.prototxt (or ``proto``) on the test LMDB."""
    from dnntool.tools.evaluate import evaluate

    proto, weights = proto or Path(str(prefix) + ".prototxt"), str(prefix) + ".caffemodel"
    r = evaluate(proto, weights, iterations=1, device=device, threads=1)
    params, macs = _counts(proto)
    row = ModelRow(name, weights, _accuracy(r), params, macs, os.path.getsize(weights),
                   1000 * r.seconds / r.iterations, r.batch_size)
    res.models.append(row)
    return row
