"""The mean image of LMDBs of Datums: the library half of ``compute-image-mean``.

Caffe's compute_image_mean sums every record into float32 (which drifts on large sets) and
fails without naming the record whose size differs. Here uint8 pixels are summed exactly
(float32 holds their integer sums up to 65,793 records, float64 beyond), float_data in float64;
per-channel sums of squares give the standard deviation; encoded records are decoded natively (as
Caffe does); several databases merge their sums. Raw records are read in place from LMDB's pages
(no protobuf parse, no copy). With --jobs 1 each database is one pass in this process; with N,
this process and N - 1 forked ones take key ranges in turn (cut by interpolating between the first
and last keys: no walk), and the children hand their sums back through shared memory.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from dnntool.errors import FormatError, SourceLoc, UsageError
from dnntool.io.datadb import (
    acquire_lmdb,
    datum_header,
    datum_view,
    is_lmdb,
    key_splits,
    lmdb_entries,
    parse_datum,
    release_lmdb,
    shared_lmdb,
)
from dnntool.tools.images import decode_image, fmt_dims, image_shape
from dnntool.tools.parallel import Team, one_opencv_thread, resolve_jobs

Progress = Callable[[int, int], None]

MEAN_CHUNK = 256  # records between progress updates in this process
MIN_TASK = 64  # records in the shortest key range a member takes at once (the last ones)
MAX_CHUNK = 4096  # records in the longest
EXACT32 = 65793  # records whose uint8 sums float32 holds exactly: 255 * 65793 < 2**24
SQ_PART = 66051  # pixels whose uint8 squares sum below 2**32: 65025 * 66051 < 2**32


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
    """Partial sums over records of one shape, in C x H x W order: per-pixel sums of uint8
    records in float32 (``cv2.accumulate``; exact integers for up to ``EXACT32`` records), flushed
    into float64 with float_data records (exact integers below 2^53); per-channel sums of squares,
    exact integers in float64: one ``cv2.reduce`` REDUCE_SUM2 a record over its C planes as rows.
    OpenCV sums a row's uint8 squares in int32, which wraps past 2^31 (a bright 227 x 227 plane
    reaches 3.4e9), but stays congruent modulo 2^32; a row of at most ``SQ_PART`` pixels sums
    below 2^32, so the value modulo 2^32 is the sum. Larger planes are cut into such rows.
    (``cv2.norm`` NORM_L2SQR does not wrap but squares a square root: off by an ulp, so the totals
    could differ in the last bit between ``--jobs`` counts, and it is 1.2 us a record slower.)

    ``acc`` may be a caller's buffer (a shared-memory slot the parent reads without pickling);
    it is zeroed here.
    """

    def __init__(self, shape: tuple[int, int, int], acc=None):
        c, h, w = shape
        self.shape = shape
        self.n = c * h * w
        self.rows = (c, h * w)  # a record as one row a channel
        self.grid = (c * h, w)  # ... and in the float32 sums' layout
        self.acc: np.ndarray | None = None  # float32, (C*H) x W
        if acc is not None:
            self.acc = np.frombuffer(acc, np.float32, self.n).reshape(self.grid)
            self.acc.fill(0)
        self.pending = 0  # records in acc since its last flush into wide
        self.wide: np.ndarray | None = None  # float64, C*H*W
        self.sq = np.zeros(c, np.float64)
        p = h * w
        self._cuts = [(i, min(i + SQ_PART, p)) for i in range(0, p, SQ_PART)]
        self._whole = len(self._cuts) == 1  # one row a plane
        self._sqs: list = []  # C x 1 sums of squares modulo 2^32, part after part, not yet in sq
        self.count = self.encoded = 0

    def check(self, shape, key: bytes, db: str, ref_key: bytes) -> None:
        if tuple(shape) != self.shape:
            raise FormatError(
                f"record '{_k(key)}' is {fmt_dims(shape)} but the first record '{_k(ref_key)}' is"
                f" {fmt_dims(self.shape)}; every record must have one size (convert with"
                " --resize-height/--resize-width)", SourceLoc(db))

    def _pixels(self) -> np.ndarray:
        """Count one more uint8 record; the float32 sums to add it to."""
        if self.pending == EXACT32 or self.acc is None:
            self._room()
        self.pending += 1
        self.count += 1
        return self.acc

    def _room(self) -> None:
        if self.pending == EXACT32:
            self.flush()
        if self.acc is None:
            self.acc = np.zeros(self.grid, np.float32)

    def add_pixels(self, a: np.ndarray) -> None:
        """One raw record: ``a`` is the flat C x H x W uint8 payload. The per-record path of a raw
        database, so ``_pixels`` is written out here (0.5 us a record in all: 2%)."""
        if self.pending == EXACT32 or self.acc is None:
            self._room()
        self.pending += 1
        self.count += 1
        # The sums of squares first: a pure read that brings the record into the cache.
        if self._whole:
            self._sqs.append(cv2.reduce(a.reshape(self.rows), 1, cv2.REDUCE_SUM2, dtype=cv2.CV_64F))
        else:
            self._squares(a.reshape(self.rows))
        cv2.accumulate(a.reshape(self.grid), self.acc)

    def _squares(self, planes: np.ndarray) -> None:
        """Keep the sums of squares of ``planes`` (C x H*W uint8), modulo 2^32 (see the class notes)."""
        if self._whole:
            self._sqs.append(cv2.reduce(planes, 1, cv2.REDUCE_SUM2, dtype=cv2.CV_64F))
        else:
            for i, j in self._cuts:
                self._sqs.append(cv2.reduce(planes[:, i:j], 1, cv2.REDUCE_SUM2, dtype=cv2.CV_64F))

    def add_image(self, img: np.ndarray) -> None:
        """One decoded record: H x W (x C) uint8, added plane by plane."""
        h = self.shape[1]
        acc = self._pixels()
        planes = cv2.split(img) if img.ndim == 3 else [img]
        self._squares(np.stack(planes).reshape(self.rows))
        for ch, plane in enumerate(planes):
            cv2.accumulate(plane, acc[ch * h:(ch + 1) * h])
        self.encoded += 1

    def add_floats(self, x: np.ndarray) -> None:
        if self.wide is None:
            self.wide = np.zeros(self.n, np.float64)
        self.wide += x
        p = x.reshape(self.rows)
        self.sq += np.einsum("ij,ij->i", p, p)
        self.count += 1

    def flush(self) -> None:
        """Move the float32 sums into float64 before they could round."""
        if self.pending:
            self._widen()
            self.acc.fill(0)

    def _widen(self) -> None:
        if self.wide is None:
            self.wide = self.acc.astype(np.float64).reshape(-1)
        else:
            self.wide += self.acc.reshape(-1)
        self.pending = 0

    def finish(self) -> _Sums:
        """Add up the sums of squares kept record by record (integers: exact in any order)."""
        if self._sqs:  # one concatenation: 0.3 ms for 2,500 records against 1.4 for ravel-and-join
            self.sq += (np.concatenate(self._sqs, axis=1) % 2.0**32).sum(axis=1)
            self._sqs = []
        return self

    def merge(self, other: _Sums, acc: np.ndarray | None = None) -> None:
        """Add ``other``'s sums; ``acc``: its float32 sums when they came back separately."""
        other.finish()
        acc = other.acc if acc is None else acc
        if other.pending:
            if self.pending + other.pending > EXACT32:
                self.flush()
            if self.acc is None:
                self.acc = acc.copy()
            else:
                np.add(self.acc, acc, out=self.acc)
            self.pending += other.pending
        if other.wide is not None:
            self.wide = other.wide if self.wide is None else self.wide + other.wide
        self.sq += other.sq
        self.count += other.count
        self.encoded += other.encoded

    def total(self) -> np.ndarray:
        """The float64 per-pixel sums, C x H x W (the float32 ones moved in, without zeroing
        them for more records: they are let go)."""
        self.finish()
        if self.pending:
            self._widen()
            self.acc = None
        return self.wide.reshape(self.shape)


def _k(key: bytes) -> str:
    return bytes(key).decode("utf-8", "replace")


_READERS: dict = {}


def _reader(db: str):
    env = _READERS.get(db)
    if env is None:
        env = _READERS[db] = acquire_lmdb(db)
    return env


def _close_readers() -> None:
    for env in _READERS.values():
        release_lmdb(env)
    _READERS.clear()


def _add_record(sums: _Sums, value, key: bytes, db: str, ref_key: bytes) -> None:
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


def _scan(task, sums: _Sums, tick: Callable[[], None] | None = None) -> None:
    """Add one task's records to ``sums``: those of ``db`` from key ``start`` (None: the first)
    up to key ``stop`` (None: the last); ``tick()`` after every MEAN_CHUNK records."""
    db, start, stop, shape, ref_key = task
    n = sums.n
    head = datum_header(*shape, n)  # raw records of the reference shape start with exactly this
    k = len(head)
    plain: set[bytes] = set()  # what follows the payload in records that hold nothing else
    end = k + n
    add, frombuffer = sums.add_pixels, np.frombuffer
    with _reader(db).begin(buffers=True) as txn:
        cur = txn.cursor()
        if not (cur.first() if start is None else cur.set_range(start)):
            return
        for key, value in cur:  # from the cursor's place on
            if stop is not None and bytes(key) >= stop:
                break
            tail = bytes(value[end:]) if len(value) >= end and value[:k] == head else None
            if tail is not None and tail not in plain and datum_view(tail) == (0, 0, 0, 0, 0, False):
                plain.add(tail)  # label and encoded=false only
            if tail in plain:
                add(frombuffer(value, np.uint8, n, k))  # fast path: no parsing
            else:
                _add_record(sums, value, bytes(key), db, ref_key)
            if tick is not None and sums.count % MEAN_CHUNK == 0:
                tick()


def _tasks(dbs: list[str], counts: list[int], jobs: int, shape: tuple[int, int, int],
           ref_key: bytes) -> list[tuple]:
    """Key ranges of the databases for a team of ``jobs`` processes, largest first: each takes
    about 1/(2 jobs) of the records still unassigned (at most MAX_CHUNK, at least MIN_TASK), so
    the first tasks cost little to hand out and the last ones are short and the members finish
    together. Cut by interpolating between the first and last keys (``key_splits``), not by a
    walk over the keys, which costs a page fault a record."""
    left, tasks = sum(counts), []
    for db, n in zip(dbs, counts, strict=True):
        cuts, done = [], 0
        while done < n:
            done += max(MIN_TASK, min(MAX_CHUNK, left // (2 * jobs)))
            if done > n - MIN_TASK:  # no shorter run after it
                done = n
            left -= done - (cuts[-1] if cuts else 0)
            cuts.append(done)
        bounds = [None, *key_splits(db, n, cuts[:-1]), None]
        tasks += [(db, start, stop, shape, ref_key) for start, stop in itertools.pairwise(bounds)]
    return tasks


def _first_record_shape(db: str) -> tuple[bytes, tuple[int, int, int]]:
    with shared_lmdb(db) as env, env.begin() as txn:
        cur = txn.cursor()
        if not cur.first():
            raise FormatError("database is empty (no records to average)", SourceLoc(db))
        key, value = bytes(cur.key()), bytes(cur.value())
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


def _average(dbs: list[str], counts: list[int], jobs: int | None, progress: Progress | None) -> _Sums:
    """The summed records of ``dbs`` (their environments held open by the caller)."""
    ref_key, shape = _first_record_shape(dbs[0])
    total, records = _Sums(shape), sum(counts)
    jobs = resolve_jobs(jobs)
    if jobs > 1:
        tasks = _tasks(dbs, counts, jobs, shape, ref_key)
    else:  # each database in one pass
        tasks = [(db, None, None, shape, ref_key) for db in dbs]
    c, h, w = shape
    # This process and jobs - 1 forked children share the key ranges; each child's float32 sums
    # come back in a shared-memory slot, the rest (small) through a pipe.
    team = Team(jobs, tasks, slot_bytes=4 * c * h * w)

    def member(team: Team, buf) -> _Sums:
        sums = total if buf is None else _Sums(shape, buf)

        def tick() -> None:
            done = team.add_done(MEAN_CHUNK)
            if buf is None and progress is not None:
                progress(min(done, records), records)

        try:
            while (task := team.claim()) is not None:
                _scan(task, sums, tick)
        finally:
            _close_readers()
        sums.finish()
        if buf is not None:
            sums.acc = None  # the parent reads them from buf
        return sums

    # OpenCV held to one thread, set here before the fork (children must not reconfigure it):
    # cv2.reduce would otherwise start OpenCV's thread pool, which spins on the other cores.
    with one_opencv_thread():
        parts = team.run(member)[1:]
    for part, buf in parts:
        total.merge(part, np.frombuffer(buf, np.float32).reshape(c * h, w))
    return total


def compute_image_mean(dbs: list[str], jobs: int | None = None,
                       progress: Progress | None = None) -> MeanResult:
    """Mean image and per-channel mean/std over every record of ``dbs`` (sums merged: the
    reduce step for sharded datasets; ``train_lmdb@4`` names the four shards of convert-images
    --shards 4). Raw uint8 ``data``, ``float_data`` and encoded records;
    every record must have the shape of the first record of the first database."""
    from dnntool.io.shards import source_paths

    t0 = time.perf_counter()
    dbs = [p for d in dbs for p in source_paths(d)]  # each may be a list 'A,B' or 'DB@K' of shards
    if not dbs:
        raise UsageError("no database given")
    with contextlib.ExitStack() as held:  # one environment per database for all the steps
        counts = []
        for db in dbs:
            if not is_lmdb(db):
                raise FormatError("no such LMDB (expected a directory holding data.mdb)", SourceLoc(db))
            held.enter_context(shared_lmdb(db))
            counts.append(lmdb_entries(db))
            if not counts[-1]:
                raise FormatError("database is empty (no records to average)", SourceLoc(db))
        total = _average(dbs, counts, jobs, progress)
    if progress is not None:
        progress(total.count, sum(counts))
    shape = total.shape
    mean = total.total()
    pixels = total.count * shape[1] * shape[2]
    ch_mean = mean.reshape(shape[0], -1).sum(axis=1) / pixels
    mean /= total.count  # in place: the sums are not needed again
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
