"""Dump intermediate blobs of a net: the library half of ``dnntool featuremap-dump``.

Per blob: a PNG mosaic of the first sample (ceil(sqrt(C)) columns of channel images, each min-max
scaled, as the classic feature-map picture; vectors as a strip) and the raw values: ``.npy`` stacked
over the images, or with a database source one LMDB of float Datums per blob (Caffe's
extract_features) or ``.npy``, keyed by the source's own keys, which extract_features loses.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dnntool.data.sources import Record
from dnntool.data.transform import Transformer, load_mean_file
from dnntool.errors import FormatError, NetError, SourceLoc, UsageError
from dnntool.net import Net
from dnntool.net.net import Layer


# -- pictures ------------------------------------------------------------------------------------
def _minmax(x: np.ndarray, axes) -> np.ndarray:
    lo = x.min(axis=axes, keepdims=True)
    span = x.max(axis=axes, keepdims=True) - lo
    return np.where(span > 0, (x - lo) * (255.0 / np.where(span > 0, span, 1)), 0).astype(np.uint8)


def mosaic(sample: np.ndarray, pad: int = 1, strip_height: int = 8) -> np.ndarray | None:
    """A uint8 picture of one sample's blob (no batch axis); None for a scalar.

    C x H x W: channels in a ceil(sqrt(C))-column grid, each min-max scaled, ``pad`` white pixels
    between tiles. A vector (or C x 1 x 1): one strip of ``strip_height`` rows, min-max scaled.
    Extra trailing axes are folded into the width.
    """
    x = np.asarray(sample, np.float32)
    if x.ndim == 0:
        return None
    if x.ndim == 1 or x[0].size == 1:
        row = _minmax(x.reshape(1, -1), (0, 1))
        return np.repeat(row, strip_height, axis=0)
    x = x.reshape(x.shape[0], 1, -1) if x.ndim == 2 else x.reshape(x.shape[0], x.shape[1], -1)
    c, h, w = x.shape
    tiles = _minmax(x, (1, 2))
    cols = math.ceil(math.sqrt(c))
    rows = math.ceil(c / cols)
    full = np.full((rows * cols, h + pad, w + pad), 255, np.uint8)
    full[:c, :h, :w] = tiles
    img = full.reshape(rows, cols, h + pad, w + pad).transpose(0, 2, 1, 3).reshape(rows * (h + pad), cols * (w + pad))
    return np.ascontiguousarray(img[: rows * (h + pad) - pad, : cols * (w + pad) - pad])


def safe_name(name: str, taken: set[str]) -> str:
    """A file-name stem for a blob name (``inception_3a/1x1`` -> ``inception_3a_1x1``), unique."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "blob"
    stem, k = base, 2
    while stem.lower() in taken:
        stem, k = f"{base}_{k}", k + 1
    taken.add(stem.lower())
    return stem


# -- preprocessing -------------------------------------------------------------------------------
@dataclass
class Preprocess:
    """Overrides of the net's transform_param from the command line."""

    mean: str | None = None  # a .binaryproto/.npy file, or comma-separated per-channel values
    scale: float | None = None
    resize: tuple[int, int] | None = None  # H, W before the centre crop to the net input
    channel_order: str = "bgr"  # of the net's input; images and Datums are BGR


def parse_mean(text: str) -> np.ndarray | tuple[float, ...]:
    """``104,117,123`` -> per-channel values; anything else is a mean file."""
    if re.fullmatch(r"\s*[-+0-9.eE]+(\s*,\s*[-+0-9.eE]+)*\s*", text):
        try:
            return tuple(float(v) for v in text.split(","))
        except ValueError:
            pass
    if not Path(text).exists():
        raise UsageError(f"--mean '{text}': no such file, and not comma-separated numbers")
    return load_mean_file(text)


def _input_layer(net: Net) -> tuple[Layer, str]:
    feeds = [(layer, t) for layer in net.layers if layer.impl.is_data for t in layer.tops[:1]
             if net.blobs[t].consumers]
    if len(feeds) != 1:
        names = ", ".join(t for _, t in feeds) or "none"
        raise NetError(f"featuremap-dump feeds one image input; the net has {len(feeds)} ({names})")
    return feeds[0]


def make_transform(layer: Layer, pre: Preprocess, net_path: str | None) -> tuple[Transformer, tuple | None]:
    """The TEST-phase transform for the input layer, with overrides, and the size to resize to."""
    from dnntool.data.feeder import resolve_path

    c, h, w = layer.top_shapes[0][1:4]
    tp = layer.param.transform_param
    base = Transformer.from_param(tp, "test", lambda p: resolve_path(p, net_path),
                                  where=f"layer '{layer.name}' ({layer.type}) transform_param")
    mean, mean_values = base.mean, base.mean_values
    if pre.mean is not None:
        m = parse_mean(pre.mean)
        mean, mean_values = (None, m) if isinstance(m, tuple) else (m, ())
    scale = base.scale if pre.scale is None else float(pre.scale)
    if pre.resize is not None:
        size = tuple(pre.resize)
    elif mean is not None:
        size = tuple(mean.shape[1:])
    elif tp.crop_size:
        size = None  # records as they are, centre-cropped as the Data layer does at test time
    else:
        size = (h, w)
    t = Transformer(scale=scale, crop=(h, w), mean=mean, mean_values=mean_values,
                    force_color=base.force_color, force_gray=base.force_gray)
    if mean is not None and size is not None and mean.shape[1:] != size:
        raise UsageError(f"the mean is {mean.shape[1]}x{mean.shape[2]} but records are resized to"
                         f" {size[0]}x{size[1]}; Caffe subtracts the mean at the record size")
    if t.mean is not None and t.mean.shape[0] != c:
        raise UsageError(f"the mean has {t.mean.shape[0]} channels, the net input {c}")
    return t, size


def make_prepare(size: tuple[int, int] | None, channels: int, rgb: bool) -> Callable[[Record], Record]:
    """Resize to ``size`` (H, W) and reorder channels; checks the channel count."""
    import cv2

    def prepare(r: Record) -> Record:
        x = r.data
        if x.shape[0] != channels:
            raise FormatError(f"record '{r.key}' has {x.shape[0]} channels, the net input {channels}")
        if size is not None and x.shape[1:] != tuple(size):
            img = cv2.resize(np.ascontiguousarray(x.transpose(1, 2, 0)), (size[1], size[0]))
            x = img[None] if img.ndim == 2 else img.transpose(2, 0, 1)
        if rgb and channels == 3:
            x = x[::-1]
        return Record(r.key, x, r.label)

    return prepare


# -- writers -------------------------------------------------------------------------------------
def _legacy_chw(shape: Sequence[int]) -> tuple[int, int, int]:
    """A per-record blob shape as Datum channels/height/width (Caffe's legacy view; rest in width)."""
    s = [int(d) for d in shape]
    c = s[0] if s else 1
    h = s[1] if len(s) > 1 else 1
    w = math.prod(s[2:]) if len(s) > 2 else 1
    return c, h, w



def float_datum(chw: tuple[int, int, int], values: np.ndarray, label: int = 0) -> bytes:
    """A serialized Datum holding ``values`` in float_data (packed: what every protobuf parser reads)."""
    from dnntool.io.datadb import bytes_field
    from dnntool.proto import caffe_pb2

    d = caffe_pb2.Datum(channels=chw[0], height=chw[1], width=chw[2], label=label)
    payload = np.ascontiguousarray(values, "<f4").tobytes()
    number = caffe_pb2.Datum.DESCRIPTOR.fields_by_name["float_data"].number
    return d.SerializeToString() + bytes_field(number, payload)


class _LmdbFeatures:
    """One LMDB of float Datums, committed every 1000 records (extract_features)."""

    def __init__(self, path: Path, per_record: int, records: int):
        import lmdb

        path.mkdir(parents=True, exist_ok=True)
        size = max(1 << 24, int(records * (per_record * 4 + 64) * 1.5) + (1 << 20))
        self.env = lmdb.open(str(path), map_size=size, subdir=True)
        self.txn = self.env.begin(write=True)
        self.pending = 0

    def put(self, key: str, chw: tuple[int, int, int], values: np.ndarray) -> None:
        self.txn.put(key.encode("utf-8"), float_datum(chw, values))
        self.pending += 1
        if self.pending >= 1000:
            self.txn.commit()
            self.txn = self.env.begin(write=True)
            self.pending = 0

    def close(self) -> None:
        self.txn.commit()
        self.env.close()

    def abort(self) -> None:
        self.txn.abort()
        self.env.close()


@dataclass
class BlobDump:
    """One dumped blob: its name, per-record shape, files and statistics over every record."""

    name: str
    shape: list[int]
    data: str
    png: str | None
    stats: dict[str, float] = field(default_factory=dict)


@dataclass
class DumpResult:
    """What ``dump_featuremaps`` wrote."""

    out_dir: str
    provider: str
    keys: list[str]
    batches: int
    batch_size: int
    blobs: list[BlobDump] = field(default_factory=list)
    seconds: float = 0.0


class _Stats:
    def __init__(self) -> None:
        self.n = 0
        self.s = 0.0
        self.ss = 0.0
        self.zeros = 0
        self.lo = math.inf
        self.hi = -math.inf

    def add(self, x: np.ndarray) -> None:
        if not x.size:
            return
        flat = x.reshape(-1)
        self.n += flat.size
        self.s += float(np.add.reduce(flat, dtype=np.float64))
        self.ss += float(np.dot(flat, flat))  # BLAS in float32: plenty for a summary statistic
        self.zeros += int(flat.size - np.count_nonzero(flat))
        self.lo = min(self.lo, float(flat.min()))
        self.hi = max(self.hi, float(flat.max()))

    def result(self) -> dict[str, float]:
        if not self.n:
            return {}
        mean = self.s / self.n
        return {"min": self.lo, "max": self.hi, "mean": mean,
                "std": math.sqrt(max(0.0, self.ss / self.n - mean * mean)), "zeros": self.zeros / self.n}


# -- the dump ------------------------------------------------------------------------------------
def select_blobs(net: Net, blobs: str | Sequence[str]) -> list[str]:
    """SSA ids of the requested Caffe blob names (their final values, as Caffe's net.blobs), or all."""
    if isinstance(blobs, str) and blobs == "all":
        seen: dict[str, str] = {}
        for layer in net.layers:
            if layer.impl.is_data or not layer.impl.translatable:
                continue
            for t in layer.top_names:
                seen.setdefault(t, net.latest.get(t, t))
        ids = list(dict.fromkeys(seen.values()))
        return [i for i in ids if i in net.blobs]
    out = []
    for name in ([blobs] if isinstance(blobs, str) else blobs):
        if name not in net.latest and name not in net.blobs:
            known = ", ".join(list(net.latest)[:12])
            raise NetError(f"no blob named '{name}' in net '{net.name}' (blobs: {known}"
                           f"{', ...' if len(net.latest) > 12 else ''})")
        out.append(net.blob(name).id)
    return list(dict.fromkeys(out))


def _with_batch(net: Net, top: str, batch: int, input_shapes) -> Net:
    shape = net.blobs[top].shape
    if shape[0] == batch:
        return net
    shapes = dict(input_shapes or {})
    shapes[net.blobs[top].name] = (batch, *shape[1:])
    return Net.from_param(net.param_proto, "test", input_shapes=shapes, path=net.source)


def dump_featuremaps(
    net_path: str | os.PathLike[str],
    weights,
    out_dir: str | os.PathLike[str],
    blobs: str | Sequence[str] = "all",
    images: Sequence[str] | None = None,
    db: str | os.PathLike[str] | None = None,
    num_batches: int | None = None,
    db_format: str = "lmdb",
    pre: Preprocess | None = None,
    device: str = "auto",
    input_shapes=None,
    png: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> DumpResult:
    """Run the net on images (or the records of an LMDB) and write the requested blobs.

    Images run in batches of up to the net's batch size; a database runs ``num_batches`` batches
    of the net's batch size (Caffe's extract_features; wrapping at its end), or each record once.

    Raises:
        DnnToolError: unknown blob, unreadable image or record, weights that do not fit the net.
    """
    from dnntool.data.feeder import Feeder
    from dnntool.data.sources import ImageFilesSource, LmdbSource
    from dnntool.onnxgraph.runtime import make_session
    from dnntool.tools.export import check_device, translate

    if (images is None) == (db is None):
        raise UsageError("give --image IMG ... or --db DB (one of them)")
    check_device(device)
    if db_format not in ("lmdb", "npy"):
        raise UsageError(f"unknown database output format '{db_format}' (lmdb or npy)")
    pre = pre or Preprocess()
    net = Net.from_prototxt(net_path, phase="test", input_shapes=input_shapes)
    layer, top = _input_layer(net)
    if images is not None:
        if not images:
            raise UsageError("--image needs at least one image")
        net = _with_batch(net, top, min(len(images), net.blobs[top].shape[0]), input_shapes)
        layer, top = _input_layer(net)
    c = net.blobs[top].shape[1]
    transformer, size = make_transform(layer, pre, str(net_path))
    source = (ImageFilesSource(images, is_color=c != 1) if images is not None
              else LmdbSource(db, transformer.force_color, transformer.force_gray))
    total = len(source)
    batch = net.blobs[top].shape[0]
    batches = num_batches if num_batches is not None else math.ceil(total / batch)
    if batches <= 0:
        raise UsageError(f"--num-batches must be positive, got {batches}")
    count = total if num_batches is None else batches * batch

    ids = select_blobs(net, blobs)
    per_sample = [i for i in ids if net.blobs[i].shape[:1] == (batch,)]
    if blobs != "all" and len(per_sample) < len(ids):
        bad = next(i for i in ids if i not in per_sample)
        raise NetError(f"blob '{net.blobs[bad].name}' has shape {list(net.blobs[bad].shape)}: not one value"
                       f" per sample of the batch of {batch}, so it cannot be dumped per record")
    ids = per_sample
    if not ids:
        raise NetError(f"net '{net.name}' has no per-sample blobs to dump")
    computed = [i for i in ids if net.blobs[i].producer is None or not net.layer(net.blobs[i].producer).impl.is_data]
    feeder = Feeder(source, transformer, batch, tuple(net.blobs[top].shape[1:]),
                    prepare=make_prepare(size, c, pre.channel_order.lower() == "rgb"))
    try:
        tr = translate(net, weights, outputs=computed) if computed else None
        sess, provider = make_session(tr.model, device) if tr is not None else (None, "none")
        label = layer.tops[1] if len(layer.tops) > 1 else None
        kind = "mem" if db is None else "lmdb" if db_format == "lmdb" else "memmap"
        return _dump(net, ids, tr, sess, provider, feeder, top, label, Path(out_dir), count, batches,
                     kind, png, progress)
    finally:
        feeder.close()


def _feeds(tr, top: str, label: str | None, batch) -> dict[str, np.ndarray]:
    feeds = {}
    for name in tr.inputs:
        if name == top:
            feeds[name] = batch.data
        elif name == label:
            feeds[name] = batch.label
        else:
            raise NetError(f"featuremap-dump feeds only '{top}', but the requested blobs need input '{name}'")
    return feeds


class _BlobWriter:
    """Where one blob's values go: in memory then ``.npy`` (images), a ``.npy`` memmap or an LMDB (db)."""

    def __init__(self, out: Path, stem: str, shape: list[int], count: int, kind: str, stage: _Staging):
        self.kind, self.shape, self.stats = kind, shape, _Stats()
        self.path = out / (f"{stem}.lmdb" if kind == "lmdb" else f"{stem}.npy")
        self.tmp = stage.add(self.path)
        self.parts: list[np.ndarray] = []
        self.store: object = None
        if kind == "lmdb":
            self.store = _LmdbFeatures(self.tmp, math.prod(shape) if shape else 1, count)
        elif kind == "memmap":
            self.store = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.float32,
                                                   shape=(count, *shape))

    def add(self, v: np.ndarray, keys: list[str], start: int) -> None:
        self.stats.add(v)
        if self.kind == "mem":
            self.parts.append(v.copy())
        elif self.kind == "memmap":
            self.store[start:start + len(v)] = v  # type: ignore[index]
        else:
            chw = _legacy_chw(self.shape)
            for k, x in zip(keys, v, strict=True):
                self.store.put(k, chw, x)  # type: ignore[attr-defined]

    def close(self) -> None:
        if self.kind == "mem":
            with open(self.tmp, "wb") as f:
                np.save(f, np.concatenate(self.parts) if len(self.parts) > 1 else self.parts[0])
        elif self.kind == "lmdb":
            self.store.close()  # type: ignore[attr-defined]
        elif self.kind == "memmap":
            self.store.flush()  # type: ignore[attr-defined]
            del self.store
        self.store = None

    def abort(self) -> None:
        if self.kind == "lmdb" and self.store is not None:
            self.store.abort()  # type: ignore[attr-defined]
        self.store = None


def _dump(net, ids, tr, sess, provider, feeder, top, label, out: Path, count, batches, kind, png,
          progress) -> DumpResult:
    out.mkdir(parents=True, exist_ok=True)
    taken: set[str] = {"index", "keys"}
    stems = {i: safe_name(net.blobs[i].name, taken) for i in ids}
    shapes = {i: list(net.blobs[i].shape[1:]) for i in ids}
    writers: dict[str, _BlobWriter] = {}
    stage = _Staging()
    try:
        for i in ids:
            writers[i] = _BlobWriter(out, stems[i], shapes[i], count, kind, stage)
        return _run_dump(net, ids, tr, sess, provider, feeder, top, label, out, count, batches, png,
                         progress, stems, shapes, writers, stage)
    except BaseException:
        for w in writers.values():
            w.abort()
        stage.discard()
        raise


def _run_dump(net, ids, tr, sess, provider, feeder, top, label, out, count, batches, png, progress,
              stems, shapes, writers, stage: _Staging) -> DumpResult:
    from concurrent.futures import ThreadPoolExecutor

    names = list(tr.outputs) if tr is not None else []
    t0 = time.perf_counter()
    keys: list[str] = []
    pngs: dict = {}
    done = 0
    with ThreadPoolExecutor(max_workers=2) as pool:  # cv2 and np.save release the GIL
        for b in range(batches):
            batch = feeder.next()
            vals = dict(zip(names, sess.run(names, _feeds(tr, top, label, batch)), strict=True)) if names else {}
            if top in ids:
                vals[top] = batch.data
            take = min(len(batch.keys), count - done)
            keys += batch.keys[:take]
            for i in ids:
                v = np.asarray(vals[i], np.float32)[:take]
                if b == 0 and png:
                    pngs[i] = pool.submit(_write_png, out / f"{stems[i]}.png", v[0].copy(), stage)
                writers[i].add(v, batch.keys[:take], done)
            done += take
            if progress is not None:
                progress(b + 1, batches)
        # an LMDB write transaction belongs to the thread that began it: commit those here
        closing = [pool.submit(w.close) for w in writers.values() if w.kind != "lmdb"]
        for w in writers.values():
            if w.kind == "lmdb":
                w.close()
        for f in closing:
            f.result()
        pngs = {i: f.result() for i, f in pngs.items()}
    dumps = [BlobDump(net.blobs[i].name, shapes[i], writers[i].path.name, pngs.get(i),
                      writers[i].stats.result()) for i in ids]
    res = DumpResult(str(out), provider, keys, batches, feeder.batch_size, dumps, time.perf_counter() - t0)
    (out / "index.json").unlink(missing_ok=True)  # the set is inconsistent until the new index is written
    stage.commit()
    _write_index(out, res)
    return res


def _write_png(path: Path, sample: np.ndarray, stage: _Staging) -> str | None:
    import cv2

    img = mosaic(sample)
    if img is None:
        return None
    tmp = stage.add(path)
    if not cv2.imwrite(str(tmp), img, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
        raise FormatError("cannot write the mosaic", SourceLoc(str(path)))
    return path.name


class _Staging:
    """Output files written under temporary names beside their targets (the same suffix, which
    cv2.imwrite reads the format from), renamed into place only when the whole dump succeeded, so
    a failed or interrupted dump leaves no partial file and the previous dump intact."""

    def __init__(self) -> None:
        self.files: dict[Path, Path] = {}

    def add(self, target: Path) -> Path:
        tmp = target.with_name(f".{target.stem}.tmp-{os.getpid()}{target.suffix}")
        self.files[target] = tmp
        return tmp

    def commit(self) -> None:
        import shutil

        for target, tmp in self.files.items():
            if target.is_dir():  # an LMDB from an earlier dump
                shutil.rmtree(target)
            os.replace(tmp, target)
        self.files.clear()

    def discard(self) -> None:
        import shutil

        for tmp in self.files.values():
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        self.files.clear()


def _write_index(out: Path, res: DumpResult) -> None:
    from dnntool.io.atomic import write_text

    index = {
        "provider": res.provider, "batch_size": res.batch_size, "batches": res.batches, "keys": res.keys,
        "blobs": [{"name": b.name, "shape": b.shape, "data": b.data, "png": b.png, "stats": b.stats}
                  for b in res.blobs],
    }
    write_text(out / "index.json", json.dumps(index, indent=1) + "\n")
    write_text(out / "keys.txt", "".join(k + "\n" for k in res.keys))
