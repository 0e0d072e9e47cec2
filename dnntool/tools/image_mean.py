"""The mean image of LMDBs of Datums: the library half of ``compute-image-mean``.

Caffe's compute_image_mean sums every record into float32 (which drifts on large sets) and
fails without naming the record whose size differs. Here uint8 pixels are summed exactly in
integers (uint16 within a task, uint64 across tasks), float_data in float64; per-channel sums of
squares give the standard deviation; encoded records are decoded natively (as Caffe does) in
worker processes; several databases merge their sums.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dnntool.errors import FormatError, SourceLoc, UsageError
from dnntool.io.datadb import (
    chunk_starts,
    datum_header,
    datum_view,
    is_lmdb,
    lmdb_entries,
    open_lmdb,
    parse_datum,
)
from dnntool.tools.images import decode_image, fmt_dims, image_shape
from dnntool.tools.parallel import OrderedMap, resolve_jobs

Progress = Callable[[int, int], None]

MEAN_CHUNK = 256  # records per task; at most 257 keeps the uint16 partial sums exact


@dataclass
class MeanResult:
    """The mean image (C x H x W, float64), per-channel mean and standard deviation (BGR order)."""

    dbs: list[str]
    count: int
    shape: tuple[int, int, int]
    mean: np.ndarray
    channel_mean: np.ndarray
    channel_std: np.ndarray
    encoded: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        c, h, w = self.shape
        return {"dbs": self.dbs, "count": self.count, "channels": c, "height": h, "width": w,
                "mean_value": [float(v) for v in self.channel_mean],
                "std": [float(v) for v in self.channel_std],
                "encoded_records": self.encoded, "seconds": round(self.seconds, 3)}


class _Sums:
    """Partial sums over records of one shape: uint8 pixels in exact integers (uint16 within a
    task, uint64 across tasks), float_data in float64, per-channel sums of squares in float64."""

    def __init__(self, shape: tuple[int, int, int]):
        self.shape = shape
        self.n = shape[0] * shape[1] * shape[2]
        self.chw: np.ndarray | None = None  # raw records, C x H x W order
        self.hwc: np.ndarray | None = None  # decoded records, H x W x C order (no transposes)
        self.flt: np.ndarray | None = None  # float_data records
        self.sq = np.zeros(shape[0], np.float64)
        self.count = self.encoded = 0

    def _acc(self, name: str, dtype) -> np.ndarray:
        a = getattr(self, name)
        if a is None:
            a = np.zeros(self.n, dtype)
            setattr(self, name, a)
        return a

    def check(self, shape, key: bytes, db: str, ref_key: bytes) -> None:
        if tuple(shape) != self.shape:
            raise FormatError(
                f"record '{_k(key)}' is {fmt_dims(shape)} but the first record '{_k(ref_key)}' is"
                f" {fmt_dims(self.shape)}; every record must have one size (convert with"
                " --resize-height/--resize-width)", SourceLoc(db))

    def add_pixels(self, a: np.ndarray) -> None:
        """One raw record: ``a`` is the flat C x H x W uint8 payload."""
        import cv2

        np.add(self._acc("chw", np.uint16), a, out=self.chw)
        c, h, w = self.shape
        planes = a.reshape(c, h, w)
        for ch in range(c):
            self.sq[ch] += cv2.norm(planes[ch], cv2.NORM_L2SQR)
        self.count += 1

    def add_image(self, img: np.ndarray) -> None:
        """One decoded record: H x W (x C) uint8."""
        import cv2

        np.add(self._acc("hwc", np.uint16), img.reshape(-1), out=self.hwc)
        for ch, plane in enumerate(cv2.split(img) if img.ndim == 3 else [img]):
            self.sq[ch] += cv2.norm(plane, cv2.NORM_L2SQR)
        self.count += 1
        self.encoded += 1

    def add_floats(self, x: np.ndarray) -> None:
        self._acc("flt", np.float64)
        self.flt += x
        p = x.reshape(self.shape[0], -1)
        self.sq += np.einsum("ij,ij->i", p, p)
        self.count += 1

    def widen(self) -> _Sums:
        for name in ("chw", "hwc"):
            a = getattr(self, name)
            if a is not None:
                setattr(self, name, a.astype(np.uint64))
        return self

    def merge(self, other: _Sums) -> None:
        for name in ("chw", "hwc", "flt"):
            b = getattr(other, name)
            if b is not None:
                a = getattr(self, name)
                setattr(self, name, b if a is None else a + b)
        self.sq += other.sq
        self.count += other.count
        self.encoded += other.encoded

    def total(self) -> np.ndarray:
        c, h, w = self.shape
        t = np.zeros((c, h, w), np.float64)
        if self.chw is not None:
            t += self.chw.reshape(c, h, w)
        if self.hwc is not None:
            t += self.hwc.reshape(h, w, c).transpose(2, 0, 1)
        if self.flt is not None:
            t += self.flt.reshape(c, h, w)
        return t


def _k(key: bytes) -> str:
    return bytes(key).decode("utf-8", "replace")


_READERS: dict = {}


def _reader(db: str):
    env = _READERS.get(db)
    if env is None:
        env = _READERS[db] = open_lmdb(db)
    return env


def _close_readers() -> None:
    for env in _READERS.values():
        env.close()
    _READERS.clear()


def _add_record(sums: _Sums, value, key: bytes, db: str, ref_key: bytes) -> None:
    import cv2

    view = datum_view(value)
    if view is None:  # float_data or fields our fast path does not read: the full parser
        d = parse_datum(bytes(value), key, db)
        c, h, w, payload, encoded = d.channels, d.height, d.width, d.data, d.encoded
        if not encoded and not payload and len(d.float_data):
            sums.check((c, h, w), key, db, ref_key)
            x = np.asarray(d.float_data, np.float64)
            if x.size != sums.n:
                raise FormatError(f"record '{_k(key)}': float_data holds {x.size} values but"
                                  f" {fmt_dims((c, h, w))} needs {sums.n}", SourceLoc(db))
            sums.add_floats(x)
            return
        buf = np.frombuffer(payload, np.uint8)
    else:
        c, h, w, off, ln, encoded = view
        buf = np.frombuffer(value, np.uint8, ln, off)
    if encoded:
        img = decode_image(buf, cv2.IMREAD_UNCHANGED)  # Caffe decodes natively (flag -1)
        if img is None:
            raise FormatError(f"record '{_k(key)}': the encoded image cannot be decoded", SourceLoc(db))
        if img.dtype != np.uint8:
            raise FormatError(f"record '{_k(key)}' decodes to {img.dtype} pixels; only 8-bit images"
                              " can be averaged", SourceLoc(db))
        sums.check(image_shape(img), key, db, ref_key)
        sums.add_image(img)
        return
    sums.check((c, h, w), key, db, ref_key)
    if buf.size != sums.n:
        raise FormatError(f"record '{_k(key)}': data holds {buf.size} bytes but {fmt_dims((c, h, w))}"
                          f" needs {sums.n}", SourceLoc(db))
    sums.add_pixels(buf)


def _mean_chunk(task) -> _Sums:
    db, start, stop, shape, ref_key = task
    sums = _Sums(shape)
    n = sums.n
    head = datum_header(*shape, n)  # raw records of the reference shape start with exactly this
    k = len(head)
    with _reader(db).begin(buffers=True) as txn:
        cur = txn.cursor()
        ok = cur.set_range(start)
        while ok:
            key = bytes(cur.key())
            if stop is not None and key >= stop:
                break
            value = cur.value()
            if value[:k] == head and datum_view(bytes(value[k + n:])) == (0, 0, 0, 0, 0, False):
                sums.add_pixels(np.frombuffer(value, np.uint8, n, k))  # fast path: no parsing
            else:
                _add_record(sums, value, key, db, ref_key)
            ok = cur.next()
    return sums.widen()


def _first_record_shape(db: str) -> tuple[bytes, tuple[int, int, int]]:
    import cv2

    env = open_lmdb(db)
    try:
        with env.begin() as txn:
            cur = txn.cursor()
            if not cur.first():
                raise FormatError("database is empty (no records to average)", SourceLoc(db))
            key, value = bytes(cur.key()), bytes(cur.value())
    finally:
        env.close()
    d = parse_datum(value, key, db)
    shape = (d.channels, d.height, d.width)
    if d.encoded:
        img = decode_image(np.frombuffer(d.data, np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise FormatError(f"record '{_k(key)}': the encoded image cannot be decoded", SourceLoc(db))
        shape = image_shape(img)
    if min(shape) <= 0:
        raise FormatError(f"record '{_k(key)}' has no channels/height/width ({fmt_dims(shape)})", SourceLoc(db))
    return key, shape


def compute_image_mean(dbs: list[str], jobs: int | None = None,
                       progress: Progress | None = None) -> MeanResult:
    """Mean image and per-channel mean/std over every record of ``dbs`` (sums merged: the
    reduce step for sharded datasets). Raw uint8 ``data``, ``float_data`` and encoded records;
    every record must have the shape of the first record of the first database."""
    t0 = time.perf_counter()
    dbs = [str(d) for d in dbs]
    if not dbs:
        raise UsageError("no database given")
    counts = []
    for db in dbs:
        if not is_lmdb(db):
            raise FormatError("no such LMDB (expected a directory holding data.mdb)", SourceLoc(db))
        counts.append(lmdb_entries(db))
        if not counts[-1]:
            raise FormatError("database is empty (no records to average)", SourceLoc(db))
    ref_key, shape = _first_record_shape(dbs[0])
    tasks = []
    for db in dbs:
        starts = chunk_starts(db, MEAN_CHUNK)
        tasks += [(db, s, starts[i + 1] if i + 1 < len(starts) else None, shape, ref_key)
                  for i, s in enumerate(starts)]
    total, done = _Sums(shape), 0
    jobs = min(resolve_jobs(jobs), len(tasks))
    try:
        with OrderedMap(_mean_chunk, jobs) as pool:
            for part in pool.map(tasks):
                total.merge(part)
                done += part.count
                if progress is not None:
                    progress(done, sum(counts))
    finally:
        _close_readers()
    sums = total.total()
    mean = sums / total.count
    pixels = total.count * shape[1] * shape[2]
    ch_mean = sums.reshape(shape[0], -1).sum(axis=1) / pixels
    ch_std = np.sqrt(np.maximum(total.sq / pixels - ch_mean ** 2, 0.0))
    return MeanResult(dbs, total.count, shape, mean, ch_mean, ch_std, total.encoded,
                      time.perf_counter() - t0)


def write_mean(result: MeanResult, binaryproto: str | None = None, npy: str | None = None) -> None:
    """``binaryproto``: Caffe's mean file (legacy num=1/channels/height/width, float data);
    ``npy``: the float64 C x H x W array."""
    if binaryproto:
        from dnntool.io.blob import write_binaryproto

        write_binaryproto(binaryproto, result.mean.astype(np.float32), legacy=True)
    if npy:
        import io

        from dnntool.io.atomic import write_bytes

        buf = io.BytesIO()
        np.save(buf, result.mean)
        write_bytes(npy, buf.getvalue())
