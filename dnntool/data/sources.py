"""Record sources for data layers: an LMDB of Datums (Data) and an image list file (ImageData).

A record is (key, C x H x W array, label): uint8 pixels (or float32 for ``float_data`` Datums) in
Caffe's BGR channel order. Sources iterate in a fixed order and can cycle, as Caffe's readers
restart from the first record at the end of the database. An LMDB source may be several shards,
read round-robin. LMDB and image-list sources can start at any position and take every n-th record
(one rank's share in data-parallel training) without decoding the records they step over.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from dnntool.errors import FormatError, SourceLoc
from dnntool.io.datadb import acquire_lmdb, release_lmdb
from dnntool.proto import caffe_pb2


@dataclass
class Record:
    """One sample: its key (LMDB key or image path as listed), C x H x W data and label."""

    key: str
    data: np.ndarray
    label: float


def _imread_flags(force_color: bool, force_gray: bool) -> int:
    import cv2

    if force_color:
        return cv2.IMREAD_COLOR
    if force_gray:
        return cv2.IMREAD_GRAYSCALE
    return cv2.IMREAD_UNCHANGED  # Caffe's DecodeDatumToCVMatNative


def hwc_to_chw(img: np.ndarray) -> np.ndarray:
    """An OpenCV image (H x W or H x W x C, BGR) as C x H x W."""
    return img[None] if img.ndim == 2 else img.transpose(2, 0, 1)


def datum_array(value: bytes, key: str, path: str | None = None, force_color: bool = False,
                force_gray: bool = False) -> tuple[np.ndarray, int]:
    """Decode a serialized Datum to (C x H x W array, label): raw bytes, float_data or encoded."""
    from dnntool.io.datadb import parse_datum

    d = parse_datum(value, key, path)
    return decode_datum(d, key, path, force_color, force_gray), d.label


def _raw_bytes(d, key: str, path: str | None) -> bytes | None:
    """A raw Datum's pixel bytes after checking their count, or None for encoded/float records."""
    raw = d.data
    if not raw or d.encoded:
        return None
    n = d.channels * d.height * d.width
    if len(raw) != n:
        raise FormatError(f"record '{key}': data holds {len(raw)} bytes but channels x height x"
                          f" width = {d.channels}x{d.height}x{d.width} = {n}", SourceLoc(path))
    return raw


def decode_datum(d, key: str, path: str | None = None, force_color: bool = False,
                 force_gray: bool = False) -> np.ndarray:
    """A parsed Datum's C x H x W array: uint8 for raw and encoded records, float32 for float_data."""
    where = SourceLoc(path)
    if d.encoded:
        import cv2

        img = cv2.imdecode(np.frombuffer(d.data, np.uint8), _imread_flags(force_color, force_gray))
        if img is None:
            raise FormatError(f"record '{key}': the encoded image cannot be decoded", where)
        if img.dtype != np.uint8:
            raise FormatError(f"record '{key}': decoded image is {img.dtype}, expected 8-bit", where)
        return hwc_to_chw(img)
    shape = (d.channels, d.height, d.width)
    raw = _raw_bytes(d, key, path)
    if raw is not None:
        return np.frombuffer(raw, np.uint8).reshape(shape)
    if len(d.float_data):
        arr = np.asarray(d.float_data, np.float32)
        if arr.size != shape[0] * shape[1] * shape[2]:
            raise FormatError(f"record '{key}': float_data holds {arr.size} values but channels x height"
                              f" x width = {'x'.join(map(str, shape))} = {arr.size}", where)
        return arr.reshape(shape)
    raise FormatError(f"record '{key}': the Datum holds no data", where)


class Interleave:
    """Round-robin order over databases of the given sizes: record g of the whole is database
    g % K's record g // K while every one has records left; those that run out drop out of the
    later rounds. For shards written by ``convert-images --shards K`` this is the unsharded order."""

    def __init__(self, sizes: Sequence[int]):
        self.sizes = [int(n) for n in sizes]
        self.total = sum(self.sizes)
        self._segments: list[tuple[int, int, list[int]]] = []  # (first position, first round, databases in)
        position = rounds = 0
        for n in sorted(set(self.sizes)):
            if n > rounds:
                active = [s for s, size in enumerate(self.sizes) if size > rounds]
                self._segments.append((position, rounds, active))
                position += (n - rounds) * len(active)
                rounds = n
        self._starts = [seg[0] for seg in self._segments]

    def locate(self, position: int) -> tuple[int, int]:
        """(database, index in it) of ``position`` (taken modulo the total)."""
        position %= self.total
        first, rounds, active = self._segments[bisect.bisect_right(self._starts, position) - 1]
        r, j = divmod(position - first, len(active))
        return active[j], rounds + r


class LmdbSource:
    """Datums of an LMDB in key order (what Caffe's Data layer reads), or of several LMDBs (shards)
    read round-robin as ``Interleave`` orders them.

    ``path`` is one database, a source spec (``A,B`` or ``DB@K``: ``dnntool.io.shards``) or a list of
    paths. A missing or empty shard is an error naming it; an empty shard among full ones is read as
    having run out.
    """

    def __init__(self, path: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
                 force_color: bool = False, force_gray: bool = False):
        from dnntool.io.datadb import is_lmdb
        from dnntool.io.shards import source_paths

        if isinstance(path, (str, os.PathLike)):
            self.path = os.fspath(path)
            self.paths = source_paths(self.path)
        else:
            self.paths = [os.fspath(p) for p in path]
            self.path = ",".join(self.paths)
        self.force_color = force_color
        self.force_gray = force_gray
        self.envs: list = []
        several = len(self.paths) > 1
        try:
            for i, p in enumerate(self.paths):
                which = f"database {i + 1} of the {len(self.paths)} of the source" if several else ""
                if not Path(p).exists():
                    raise FormatError("no such LMDB" + (f" ({which})" if which else ""), SourceLoc(p))
                if not is_lmdb(p):
                    raise FormatError("not an LMDB (no data.mdb; LevelDB is not supported"
                                      + (f"; {which})" if which else ")"), SourceLoc(p))
                self.envs.append(acquire_lmdb(p))
            self.order = Interleave([int(env.stat()["entries"]) for env in self.envs])
            self.size = self.order.total
            if not self.size:
                raise FormatError("every database of the source is empty" if several else "database is empty",
                                  SourceLoc(self.path))
        except BaseException:
            self.close()
            raise

    def __len__(self) -> int:
        return self.size

    def items(self, start: int = 0, stride: int = 1, cycle: bool = True) -> Iterator[tuple[bytes, bytes, str]]:
        """(key, value, database path) of the records at positions start, start + stride, ... of
        the round-robin order, modulo the size with ``cycle`` (else up to the end). The records in
        between are stepped over with the cursor, never parsed."""
        with contextlib.ExitStack() as stack:
            if len(self.envs) == 1 and stride == 1:
                yield from _sequential(stack.enter_context(self.envs[0].begin(buffers=False)),
                                       start % self.size, cycle, self.paths[0])
                return
            cursors: list = [None] * len(self.envs)
            at = [0] * len(self.envs)
            p = start % self.size if cycle else start
            while p < self.size:
                s, i = self.order.locate(p)
                cur = cursors[s]
                if cur is None or i < at[s]:
                    if cur is None:  # a database is opened for reading only once it is read
                        cur = cursors[s] = stack.enter_context(self.envs[s].begin(buffers=False)).cursor()
                    cur.first()
                    at[s] = 0
                while at[s] < i:
                    cur.next()
                    at[s] += 1
                yield cur.key(), cur.value(), self.paths[s]
                p += stride
                if cycle:
                    p %= self.size

    def records(self, cycle: bool = False, start: int = 0, stride: int = 1) -> Iterator[Record]:
        """Records in key order (round-robin over shards); with ``cycle`` restart from the first
        one at the end, forever. ``start``/``stride``: only positions start, start + stride, ..."""
        for key, value, path in self.items(start, stride, cycle):
            k = key.decode("utf-8", "replace")
            data, label = datum_array(value, k, path, self.force_color, self.force_gray)
            yield Record(k, data, float(label))

    def chunks(self, n: int) -> Iterator[tuple[list[str], np.ndarray | list[np.ndarray], np.ndarray]]:
        """Endless groups of ``n`` records in key order, wrapping: (keys, data, labels).

        ``data`` is one N x C x H x W uint8 array when the group is raw Datums of one shape (their
        bytes joined once: the cheap path the feeder takes), else a list of C x H x W arrays.
        """
        from dnntool.io.datadb import parse_datum

        from_string = caffe_pb2.Datum.FromString
        items = self.items()
        while True:
            keys, labels, parts, shapes = [], [], [], []
            joinable = True
            for _ in range(n):
                k, v, path = next(items)
                try:
                    d = from_string(v)
                except DecodeError:
                    d = parse_datum(v, k.decode("utf-8", "replace"), path)  # raises, naming the key
                shape = (d.channels, d.height, d.width)
                raw = d.data
                if raw and not d.encoded and len(raw) == shape[0] * shape[1] * shape[2]:
                    parts.append(raw)
                    joinable = joinable and (not shapes or shape == shapes[0])
                else:
                    joinable = False
                    parts.append(decode_datum(d, k.decode("utf-8", "replace"), path,
                                              self.force_color, self.force_gray))
                keys.append(k)
                labels.append(d.label)
                shapes.append(shape)
            if joinable:
                data: np.ndarray | list[np.ndarray] = np.frombuffer(
                    b"".join(parts), np.uint8).reshape(n, *shapes[0])
            else:
                data = [np.frombuffer(p, np.uint8).reshape(s) if isinstance(p, bytes) else p
                        for p, s in zip(parts, shapes, strict=True)]
            yield [k.decode("utf-8", "replace") for k in keys], data, np.asarray(labels, np.float32)

    def close(self) -> None:
        for env in self.envs:
            release_lmdb(env)
        self.envs = []


def _sequential(txn, skip: int, cycle: bool, path: str) -> Iterator[tuple[bytes, bytes, str]]:
    """(key, value, path) of a transaction in key order from record ``skip``, restarting at the
    first after the last when ``cycle``."""
    cur = txn.cursor()
    cur.first()
    for _ in range(skip):
        cur.next()
    while True:
        for key, value in cur:
            yield key, value, path
        if not cycle:
            return
        cur.first()


def parse_list_file(path: str | os.PathLike[str]) -> list[tuple[str, int]]:
    """ImageData's list: ``path label`` per line, split at the last blank (Caffe's find_last_of)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise FormatError(f"cannot read the image list: {e.strerror or e}", SourceLoc(str(path))) from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        name, sep, label = line.rstrip().rpartition(" ")
        if not sep:
            name, sep, label = line.rstrip().rpartition("\t")
        if not sep:  # no label: Caffe reads atoi(line) as the label, i.e. 0 for a file name
            out.append((line.strip(), 0))
            continue
        try:
            out.append((name, int(label)))
        except ValueError:
            raise FormatError(f"label '{label}' is not an integer", SourceLoc(str(path), n)) from None
    if not out:
        raise FormatError("the image list is empty", SourceLoc(str(path)))
    return out


class ImageListSource:
    """Images of an ImageData list (root_folder, new_height x new_width, is_color, shuffle)."""

    def __init__(self, list_path: str | os.PathLike[str], root_folder: str = "", new_height: int = 0,
                 new_width: int = 0, is_color: bool = True, shuffle: bool = False, seed: int = 0):
        self.path = str(list_path)
        self.lines = parse_list_file(list_path)
        self.root = root_folder
        self.size_hw = (int(new_height), int(new_width)) if new_height and new_width else None
        self.is_color = is_color
        self.shuffle = shuffle
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.lines)

    def read(self, name: str) -> np.ndarray:
        """One image as C x H x W uint8, resized as the layer asks."""
        import cv2

        full = os.path.join(self.root, name)
        img = cv2.imread(full, cv2.IMREAD_COLOR if self.is_color else cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise FormatError(f"image '{full}' cannot be read", SourceLoc(self.path))
        if self.size_hw is not None and img.shape[:2] != self.size_hw:
            img = cv2.resize(img, (self.size_hw[1], self.size_hw[0]))
        return hwc_to_chw(img)

    def records(self, cycle: bool = False, start: int = 0, stride: int = 1) -> Iterator[Record]:
        """Records in list order (shuffled per pass when ``shuffle``), cycling when asked.

        ``start``/``stride``: only positions start, start + stride, ... of that stream; every pass
        before or between them still draws its shuffle, so the order is the one a reader from 0
        sees, and the images in between are not read.
        """
        n, p = len(self.lines), start
        for base in itertools.count(0, n):
            order = self.rng.permutation(n) if self.shuffle else range(n)
            while p < base + n:
                name, label = self.lines[order[p - base]]
                yield Record(name, self.read(name), float(label))
                p += stride
            if not cycle:
                return

    def close(self) -> None:
        pass


class ImageFilesSource:
    """Image files given one by one (featuremap-dump ``--image``), keyed by the path as given."""

    def __init__(self, paths, is_color: bool = True):
        self.paths = [str(p) for p in paths]
        self.is_color = is_color
        self.path = None

    def __len__(self) -> int:
        return len(self.paths)

    def records(self, cycle: bool = False) -> Iterator[Record]:
        import cv2

        while True:
            for p in self.paths:
                img = cv2.imread(p, cv2.IMREAD_COLOR if self.is_color else cv2.IMREAD_GRAYSCALE)
                if img is None:
                    raise FormatError("image cannot be read (missing or not an image)", SourceLoc(p))
                yield Record(p, hwc_to_chw(img), 0.0)
            if not cycle:
                return

    def close(self) -> None:
        pass
