"""Images -> LMDB of Caffe Datums: the library half of ``convert-images``.

Caffe's convert_imageset, record for record: ``cv::imread`` (colour or grayscale), an exact
``cv::resize`` (INTER_LINEAR) when both sizes are set, CHW bytes in BGR order, keys
``%08d_<path>`` numbered by list position (a skipped image still uses its number). Beyond Caffe:
aspect-preserving resizes (DIGITS' geometry), C/H/W on encoded records, a seeded shuffle, class
folders with a stratified validation split, worker processes, atomic output, sharded output
(``DB-0000i-of-0000K``, record j to shard j % K; ``dnntool.io.shards``). The mean image is
``dnntool.tools.image_mean``.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from dnntool.errors import FormatError, SourceLoc, UsageError
from dnntool.io.datadb import LmdbWriter, StagedDb, datum_header, datum_trailer
from dnntool.io.shards import shard_name, shard_sets
from dnntool.tools.parallel import OrderedMap, one_opencv_thread, resolve_jobs

Progress = Callable[[int, int], None]
Warn = Callable[[str], None]

IMAGE_SUFFIXES = frozenset({".bmp", ".jpeg", ".jpg", ".jpe", ".png", ".pbm", ".pgm", ".ppm",
                            ".pnm", ".tif", ".tiff", ".webp"})
RESIZE_MODES = ("squash", "fit", "fill")


class ListEntry(NamedTuple):
    """One image: its path as listed (relative to ROOT), its label, and where it was listed."""

    path: str
    label: int
    line: int = 0  # 1-based list-file line; 0 in folder mode


@dataclass(frozen=True)
class ConvertOptions:
    """Everything ``convert-images`` can be asked to do (CLI flags map one to one)."""

    resize_height: int = 0
    resize_width: int = 0
    resize_mode: str = "squash"
    gray: bool = False
    encoded: bool = False
    encode_type: str = ""  # "" with encoded: the file's own extension
    shuffle: bool = False
    seed: int = 0
    check_size: bool = False
    strict: bool = False
    jobs: int | None = None  # None: all cores
    overwrite: bool = False
    val_split: float = 0.0
    val_db: str | None = None  # default: <DB>_val
    shards: int = 0  # K >= 1: the training records go to DB-0000i-of-0000K, record j to shard j % K
    shard: int | None = None  # with shards: write only this piece (the same bytes as in the full run)

    def __post_init__(self):
        if self.resize_height < 0 or self.resize_width < 0:
            raise UsageError("--resize-height/--resize-width must be >= 0")
        if bool(self.resize_height) != bool(self.resize_width):
            raise UsageError("--resize-height and --resize-width go together (both 0 keeps the size)")
        if self.resize_mode not in RESIZE_MODES:
            raise UsageError(f"--resize-mode must be one of {', '.join(RESIZE_MODES)}")
        if not 0.0 <= self.val_split < 1.0:
            raise UsageError("--val-split must be in [0, 1)")
        if self.shards < 0:
            raise UsageError("--shards must be >= 1")
        if self.shard is not None and not 0 <= self.shard < self.shards:
            raise UsageError(f"--shard {self.shard}/{self.shards}: expected I/K with 0 <= I < K")

    @property
    def resize(self) -> bool:
        return self.resize_height > 0 and self.resize_width > 0

    @property
    def is_encoded(self) -> bool:
        return self.encoded or bool(self.encode_type)  # Caffe: encode_type implies encoded


@dataclass
class Skip:
    """An image left out: as listed, the file, where it was listed, why (missing, unreadable,
    corrupt) and the detail."""

    path: str
    file: str
    where: str
    reason: str
    detail: str

    def message(self) -> str:
        return f"{self.where}: skipped '{self.file}': {self.detail}"


@dataclass
class DbSummary:
    path: str
    written: int = 0
    shape: tuple[int, int, int] | None = None  # C, H, W of the first record
    shard: int | None = None  # i of DB-0000i-of-0000K (None: not a shard)
    shards: int | None = None  # K


@dataclass
class ConvertSummary:
    """What ``convert_images`` wrote: per-DB counts, skipped images by reason, timing."""

    dbs: list[DbSummary]
    listed: int
    skipped: list[Skip] = field(default_factory=list)
    encoded: bool = False
    labels: str | None = None
    classes: list[str] | None = None
    seconds: float = 0.0

    @property
    def written(self) -> int:
        return sum(d.written for d in self.dbs)

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(s.reason for s in self.skipped).items()))

    def to_dict(self) -> dict:
        return {
            "dbs": [{"path": d.path, "written": d.written, "shape": list(d.shape) if d.shape else None,
                     **({"shard": d.shard, "shards": d.shards} if d.shards else {})} for d in self.dbs],
            "listed": self.listed, "written": self.written, "skipped": len(self.skipped),
            "skipped_by_reason": self.skipped_by_reason(),
            "skipped_images": [{"path": s.path, "file": s.file, "where": s.where, "reason": s.reason,
                                "detail": s.detail} for s in self.skipped],
            "encoded": self.encoded, "labels": self.labels, "classes": self.classes,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.listed / self.seconds, 1) if self.seconds else None,
        }


# ---------------------------------------------------------------------------------------------
# Inputs: list files, class folders, shuffle and split
# ---------------------------------------------------------------------------------------------


def read_list(path: str | os.PathLike[str]) -> list[ListEntry]:
    """``path label`` lines; the label is the last field, so paths may hold spaces. Blank lines
    are skipped; CRLF and tabs are accepted. A malformed line is an error naming its number."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline=None) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise FormatError("no such list file", SourceLoc(str(path))) from None
    except OSError as e:
        raise FormatError(f"cannot read list file: {e.strerror}", SourceLoc(str(path))) from None
    entries = []
    for no, line in enumerate(lines, 1):
        text = line.rstrip()
        if not text.strip():
            continue
        head, sep, label = _split_label(text)
        if not sep or not head.strip():
            raise FormatError(f"expected 'PATH LABEL', got '{text.strip()}'", SourceLoc(str(path), no))
        try:
            value = int(label)
        except ValueError:
            raise FormatError(f"label '{label}' is not an integer (expected 'PATH LABEL')",
                              SourceLoc(str(path), no)) from None
        if not -(2**31) <= value < 2**31:
            raise FormatError(f"label {value} does not fit Datum's int32", SourceLoc(str(path), no))
        entries.append(ListEntry(head.rstrip(" \t"), value, no))
    return entries


def _split_label(text: str) -> tuple[str, str, str]:
    cut = max(text.rfind(" "), text.rfind("\t"))
    if cut < 0:
        return "", "", text
    return text[:cut], text[cut], text[cut + 1:]


def scan_folders(root: str | os.PathLike[str]) -> tuple[list[str], list[ListEntry]]:
    """ROOT/<class>/<image>: classes in sorted order get labels 0..K-1; images sorted by name."""
    base = Path(root)
    if not base.is_dir():
        raise FormatError("no such directory (--from-folders expects ROOT/<class>/<image>)", SourceLoc(str(root)))
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    entries = []
    for label, name in enumerate(classes):
        for p in sorted((base / name).rglob("*")):
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file():
                entries.append(ListEntry(p.relative_to(base).as_posix(), label))
    if not entries:
        raise FormatError("no images found in class folders (expected ROOT/<class>/<image>)", SourceLoc(str(root)))
    return classes, entries


def shuffled(entries: list, rng: random.Random) -> list:
    """Fisher-Yates driven by ``random.random()``, whose sequence Python keeps stable across versions
    for a given seed (Caffe's order comes from its own RNG and differs)."""
    out = list(entries)
    for i in range(len(out) - 1, 0, -1):
        j = int(rng.random() * (i + 1))
        out[i], out[j] = out[j], out[i]
    return out


def stratified_split(entries: list[ListEntry], fraction: float, seed: int) -> tuple[list[ListEntry], list[ListEntry]]:
    """Per label, a seeded ``round(fraction * n)`` of the images go to validation (at least one
    stays in training); both parts keep list order."""
    rng = random.Random(seed)
    by_label: dict[int, list[int]] = {}
    for i, e in enumerate(entries):
        by_label.setdefault(e.label, []).append(i)
    val: set[int] = set()
    for label in sorted(by_label):
        idx = by_label[label]
        k = min(math.floor(fraction * len(idx) + 0.5), len(idx) - 1)
        val.update(shuffled(idx, rng)[:k])
    return ([e for i, e in enumerate(entries) if i not in val],
            [e for i, e in enumerate(entries) if i in val])


# ---------------------------------------------------------------------------------------------
# One image -> one Datum (runs in worker processes)
# ---------------------------------------------------------------------------------------------


def _round(x: float) -> int:
    return math.floor(x + 0.5)  # DIGITS ran on Python 2: round half away from zero


def resize_image(img: np.ndarray, height: int, width: int, mode: str = "squash") -> np.ndarray:
    """Resize H x W (x C) to ``height`` x ``width`` with INTER_LINEAR.

    squash: Caffe's exact ``cv::resize``. fill: scale to cover, centre-crop (DIGITS "crop").
    fit: scale to fit inside, centre, pad with black (DIGITS "fill" pads with random noise; black
    keeps the output deterministic). Same rounding as DIGITS' ``resize_image``.
    """
    import cv2

    h0, w0 = img.shape[:2]
    if not (height and width) or (h0, w0) == (height, width):
        return img
    if mode == "squash" or w0 * height == h0 * width:
        return cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
    wr, hr = w0 / width, h0 / height
    if mode == "fill":
        rh, rw = (height, _round(w0 / hr)) if wr > hr else (_round(h0 / wr), width)
        out = cv2.resize(img, (max(rw, width), max(rh, height)), interpolation=cv2.INTER_LINEAR)
        top, left = _round((out.shape[0] - height) / 2.0), _round((out.shape[1] - width) / 2.0)
        return np.ascontiguousarray(out[top:top + height, left:left + width])
    if wr > hr:
        rw, rh = width, max(1, _round(h0 / wr))
        rh += (height - rh) % 2
    else:
        rh, rw = height, max(1, _round(w0 / hr))
        rw += (width - rw) % 2
    out = cv2.resize(img, (rw, rh), interpolation=cv2.INTER_LINEAR)
    top, left = (height - rh) // 2, (width - rw) // 2
    return cv2.copyMakeBorder(out, top, height - rh - top, left, width - rw - left,
                              cv2.BORDER_CONSTANT, value=0)


def image_shape(img: np.ndarray) -> tuple[int, int, int]:
    """(C, H, W) of an OpenCV image (2-D means one channel)."""
    return (1, *img.shape) if img.ndim == 2 else (img.shape[2], img.shape[0], img.shape[1])


def write_datum(buf, off: int, payload, shape: tuple[int, int, int], label: int, encoded: bool) -> int | None:
    """Write one Datum's wire bytes into ``buf`` at ``off``; return its size, or None if it does not fit.

    Raw: Caffe's CVMatToDatum, the H x W (x C) uint8 ``payload`` as C planes (BGR) in field
    ``data``. Encoded: the image bytes, with channels/height/width set (Caffe leaves them 0).
    Fields in number order with label and encoded always present, byte for byte what protobuf
    serialises for the Datum Caffe builds.
    """
    import cv2

    c, h, w = shape
    n = len(payload) if encoded else c * h * w
    head, tail = datum_header(c, h, w, n), datum_trailer(label, encoded)
    size = len(head) + n + len(tail)
    if off + size > len(buf):
        return None
    start = off + len(head)
    buf[off:start] = head
    if encoded:
        buf[start:start + n] = payload
    elif payload.ndim == 2:
        np.frombuffer(buf, np.uint8, n, start).reshape(h, w)[...] = payload
    else:  # HWC -> CHW: cv2.split into views of buf, ten times faster than numpy's transposed copy
        planes = np.frombuffer(buf, np.uint8, n, start).reshape(c, h, w)
        views = list(planes)
        out = cv2.split(payload, views)
        if any(o.ctypes.data != v.ctypes.data for o, v in zip(out, views, strict=True)):
            planes[...] = payload.transpose(2, 0, 1)
    buf[start + n:off + size] = tail
    return size


def datum_bytes(payload, shape: tuple[int, int, int], label: int, encoded: bool) -> bytes:
    """``write_datum`` into a new buffer of exactly the right size."""
    c, h, w = shape
    n = len(payload) if encoded else c * h * w
    buf = bytearray(n + 64)
    return bytes(buf[:write_datum(buf, 0, payload, shape, label, encoded)])


def decode_image(buf: np.ndarray, flag: int):
    """``cv2.imdecode``, None for anything it cannot decode (it raises on some inputs)."""
    import cv2

    try:
        return cv2.imdecode(buf, flag)
    except cv2.error:
        return None


def _ext(path: str) -> str:
    return os.path.splitext(path)[1][1:].lower()


def _match_ext(path: str, enc: str) -> bool:
    """Caffe's matchExt: the file's extension is the encoding (``jpeg`` counts as ``jpg``)."""
    ext = _ext(path)
    return ext == enc or (enc == "jpg" and ext == "jpeg")


def _writer_ext(enc: str) -> str:
    import cv2

    return enc if enc and cv2.haveImageWriter("." + enc) else "png"


def load_image(path: str, opts: ConvertOptions):
    """Read, decode, resize (and re-encode) one image.

    Returns ``(payload, (C, H, W), encoded)`` where payload is an H x W (x C) uint8 image or, when
    encoded, the image bytes; or ``(None, reason, detail)`` when the image must be skipped.
    """
    import cv2

    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None, "missing", "no such file"
    except IsADirectoryError:
        return None, "unreadable", "is a directory"
    except OSError as e:
        return None, "unreadable", f"cannot read: {e.strerror or e}"
    if not raw:
        return None, "corrupt", "empty file"
    buf = np.frombuffer(raw, np.uint8)
    want = 1 if opts.gray else 3
    if opts.is_encoded:
        enc = opts.encode_type or _ext(path)
        if not opts.resize and _match_ext(path, enc):
            # Keep the file's bytes (Caffe's ReadFileToDatum) when they decode, natively, to what
            # was asked for; Caffe also keeps them when they do not (a grey JPEG in colour mode).
            native = decode_image(buf, cv2.IMREAD_UNCHANGED)
            if native is None:
                return None, "corrupt", "cannot decode image"
            if native.dtype == np.uint8 and image_shape(native)[0] == want:
                return raw, image_shape(native), True
    img = decode_image(buf, cv2.IMREAD_GRAYSCALE if opts.gray else cv2.IMREAD_COLOR)
    if img is None:
        return None, "corrupt", "cannot decode image"
    img = resize_image(img, opts.resize_height, opts.resize_width, opts.resize_mode)
    if opts.is_encoded:
        ok, data = cv2.imencode("." + _writer_ext(opts.encode_type or _ext(path)), img)
        if not ok:
            return None, "corrupt", "cannot encode image"
        return data.tobytes(), image_shape(img), True
    return img, image_shape(img), False


def image_datum(path: str, label: int, opts: ConvertOptions = ConvertOptions()):
    """One image as Datum wire bytes: ``(value, (C, H, W))``, or ``(None, reason, detail)``."""
    r = load_image(path, opts)
    if r[0] is None:
        return r
    payload, shape, encoded = r
    return datum_bytes(payload, shape, label, encoded), shape


_WORKER: dict = {}


def _convert_init(root: str, opts: ConvertOptions) -> None:
    import cv2

    if cv2.getNumThreads() != 1:  # forked workers inherit 1 (see _cv2_threads_restored)
        cv2.setNumThreads(1)  # one image per process at a time; N processes use N cores
    _WORKER.update(root=root, opts=opts)


def _convert_chunk(chunk: list[tuple[str, int]], buf) -> list:
    """Records go into the shared buffer (``((offset, size), shape)``) or, if it is full, inline
    (``(bytes, shape)``); skips are ``(None, reason, detail)``."""
    root, opts = _WORKER["root"], _WORKER["opts"]
    out: list = []
    off = 0
    for path, label in chunk:
        r = load_image(os.path.join(root, path), opts)
        if r[0] is None:
            out.append(r)
            continue
        payload, shape, encoded = r
        size = write_datum(buf, off, payload, shape, label, encoded) if buf is not None else None
        if size is None:
            out.append((datum_bytes(payload, shape, label, encoded), shape))
        else:
            out.append(((off, size), shape))
            off += size
    return out


@contextlib.contextmanager
def _cv2_threads_restored() -> Iterator[None]:
    """One OpenCV thread while converting (``one_opencv_thread``): in-process runs (jobs 1) work
    like each worker, and forked workers inherit it."""
    try:
        with one_opencv_thread():
            yield
    finally:
        _WORKER.clear()


# ---------------------------------------------------------------------------------------------
# convert-images
# ---------------------------------------------------------------------------------------------


def convert_images(root: str | os.PathLike[str], listfile: str | os.PathLike[str] | None,
                   db: str | os.PathLike[str], options: ConvertOptions = ConvertOptions(),
                   progress: Progress | None = None, warn: Warn | None = None) -> ConvertSummary:
    """Write the images of ``listfile`` (or, when it is None, of ROOT/<class>/ folders) to ``db``.

    Workers decode, resize and serialise; this process writes in list order, so the database is
    the same byte for byte for every ``jobs``. Output is staged and renamed when complete (see
    ``StagedDb``). Skipped images are reported through ``warn`` and in the summary. With
    ``options.shards`` the training records go to shard databases (see ``_targets``).
    """
    t0 = time.perf_counter()
    opts = options
    classes, entries = (scan_folders(root) if listfile is None else (None, read_list(listfile)))
    if not entries:
        raise FormatError("the list names no images", SourceLoc(str(listfile)))
    train, val = stratified_split(entries, opts.val_split, opts.seed) if opts.val_split else (entries, [])
    if opts.shuffle:
        rng = random.Random(opts.seed)
        train, val = shuffled(train, rng), shuffled(val, rng)
    dbs, plan = _targets(str(db), train, val, opts)
    labels_path = labels_text = None
    if classes is not None:
        labels_path, labels_text = Path(db).parent / "labels.txt", "".join(f"{c}\n" for c in classes)
        _check_labels(labels_path, labels_text, opts.overwrite)
    summary = ConvertSummary(dbs, len(plan), encoded=opts.is_encoded, classes=classes)
    stages: list[StagedDb] = []
    try:
        for d in dbs:
            stages.append(StagedDb(d.path, opts.overwrite))
        _write_plan(str(root), listfile, plan, stages, opts, summary, progress, warn)
        for s in stages:
            s.commit()
    except BaseException:
        for s in stages:
            s.discard()
        raise
    if labels_path is not None:
        from dnntool.io.atomic import write_text

        write_text(labels_path, labels_text)
        summary.labels = str(labels_path)
    if opts.shards and warn is not None:
        for count, names in shard_sets(db).items():
            if count == opts.shards:
                continue
            warn(f"{names[0]}{' ...' if len(names) > 1 else ''}: {len(names)} shard(s) of an earlier"
                 f" {count}-shard run are still there (read as {db}@{count}; not replaced, not read"
                 f" by {db}@{opts.shards})")
    summary.seconds = time.perf_counter() - t0
    return summary


def _targets(db: str, train: list[ListEntry], val: list[ListEntry],
             opts: ConvertOptions) -> tuple[list[DbSummary], list[tuple[int, int, ListEntry]]]:
    """The databases to write and the plan: (database, list position, entry) in writing order.

    Sharded, training record j goes to ``DB-0000i-of-0000K`` with i = j % K, keeping its key
    ``%08d_<path>`` (j); one piece (``shard``) writes only its own records, and the validation DB
    (never sharded) only with piece 0.
    """
    k = opts.shards
    if not k:
        dbs = [DbSummary(db)]
        plan = [(0, i, e) for i, e in enumerate(train)]
    else:
        if k > len(train):
            raise UsageError(f"--shards {k}: only {len(train)} training images, so a shard would be empty")
        pieces = range(k) if opts.shard is None else [opts.shard]
        dbs = [DbSummary(shard_name(db, i, k), shard=i, shards=k) for i in pieces]
        plan = [(i % k if opts.shard is None else 0, i, e) for i, e in enumerate(train)
                if opts.shard is None or i % k == opts.shard]
    if opts.val_split and (opts.shard or 0) == 0:
        plan += [(len(dbs), i, e) for i, e in enumerate(val)]
        dbs.append(DbSummary(opts.val_db or f"{db}_val"))
    return dbs, plan


def _check_labels(path: Path, text: str, overwrite: bool) -> None:
    if path.exists() and not overwrite and path.read_text(errors="replace") != text:
        raise FormatError("exists with other classes (use --overwrite to replace it)", SourceLoc(str(path)))


SLOT_BYTES = 8 << 20  # shared buffer per in-flight task; chunks are sized to fill about 3/4 of it


def _write_plan(root: str, listfile, plan: list, stages: list[StagedDb], opts: ConvertOptions,
                summary: ConvertSummary, progress: Progress | None, warn: Warn | None) -> None:
    jobs = min(resolve_jobs(opts.jobs), max(1, len(plan) // 4))
    sizing = {"chunk": 4, "bytes": 0, "records": 0}
    # Raw records of one size: the chunks are known now, the same for every --jobs, so each
    # chunk's records are written straight from its shared slot and committed before the slot is
    # reused (the commit points, and with them the file's bytes, follow the list alone). Other
    # records vary in size: the chunks adapt as results come back, so each record is copied out.
    fixed = opts.resize and not opts.is_encoded
    if fixed:
        size = (1 if opts.gray else 3) * opts.resize_height * opts.resize_width + 32
        sizing["chunk"] = _chunk_records(size)
    spans: deque[tuple[int, int]] = deque()

    def tasks() -> Iterator[list[tuple[str, int]]]:
        i = 0
        while i < len(plan):
            j = min(len(plan), i + sizing["chunk"])
            spans.append((i, j))
            yield [(e.path, e.label) for _, _, e in plan[i:j]]
            i = j

    state = {"ref": None}
    with _cv2_threads_restored(), OrderedMap(_convert_chunk, jobs, _convert_init, (root, opts),
                                             slot_bytes=SLOT_BYTES) as pool:
        writers: list[LmdbWriter] = []
        try:
            writers += [LmdbWriter(s.path) for s in stages]  # opened after the workers forked
            for results, buf in pool.map(tasks()):
                i, j = spans.popleft()
                for (dest, idx, e), r in zip(plan[i:j], results, strict=True):
                    _store(root, listfile, dest, idx, e, r, buf, not fixed, writers, opts, summary, state, warn)
                    if r[0] is not None:
                        sizing["bytes"] += r[0][1] if isinstance(r[0], tuple) else len(r[0])
                        sizing["records"] += 1
                if fixed:
                    for w in writers:
                        w.commit()
                elif sizing["records"]:
                    sizing["chunk"] = _chunk_records(sizing["bytes"] / sizing["records"])
                if progress is not None:
                    progress(j, len(plan))
            for w in writers:
                w.close()
        except BaseException:
            for w in writers:
                with contextlib.suppress(Exception):
                    w.abort()
            raise


def _chunk_records(record_bytes: float) -> int:
    """Records a task takes: about 3/4 of a shared slot, 64 at most."""
    return int(min(64, max(1, 0.75 * SLOT_BYTES // record_bytes)))


def _store(root: str, listfile, dest: int, idx: int, e: ListEntry, r, buf, copy: bool, writers,
           opts: ConvertOptions, summary: ConvertSummary, state: dict, warn: Warn | None) -> None:
    """Write one worker result to its database (or record the skip). A record in the shared
    buffer ``buf`` is written from it as it is, or, with ``copy``, copied out first (the writer may
    keep it uncommitted after ``buf`` is reused)."""
    import lmdb

    def where() -> tuple[SourceLoc, str]:
        return (SourceLoc(str(listfile), e.line) if listfile is not None else SourceLoc(root),
                os.path.join(root, e.path))

    if r[0] is None:
        loc, file = where()
        if opts.strict:
            raise FormatError(f"'{file}': {r[2]} (--strict)", loc)
        summary.skipped.append(Skip(e.path, file, str(loc), r[1], r[2]))
        if warn is not None:
            warn(summary.skipped[-1].message())
        return
    value, shape = r
    if isinstance(value, tuple):
        off, size = value
        value = bytes(buf[off:off + size]) if copy else buf[off:off + size]
    state["ref"] = ref = state["ref"] or shape
    if opts.check_size and shape != ref:
        loc, file = where()
        raise FormatError(f"'{file}' is {fmt_dims(shape)} but the first image is {fmt_dims(ref)}"
                          " (--check-size)", loc)
    key = f"{idx:08d}_{e.path}".encode("utf-8", "surrogateescape")
    try:
        writers[dest].put(key, value)
    except lmdb.BadValsizeError:
        raise FormatError(f"key '{key[:40].decode(errors='replace')}...' is {len(key)} bytes;"
                          " LMDB keys hold at most 511", where()[0]) from None
    d = summary.dbs[dest]
    d.written += 1
    d.shape = d.shape or shape


def fmt_dims(shape) -> str:
    """3x227x227."""
    return "x".join(str(d) for d in shape)



def __getattr__(name: str):
    # compute-image-mean lives in dnntool.tools.image_mean (which imports this module); its
    # names stay importable from here, resolved on first use so neither import order can cycle.
    if name in ("MeanResult", "compute_image_mean", "write_mean"):
        from dnntool.tools import image_mean

        return getattr(image_mean, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
