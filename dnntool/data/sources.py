"""Record sources for data layers: an LMDB of Datums (Data) and an image list file (ImageData).

A record is (key, C x H x W array, label): uint8 pixels (or float32 for ``float_data`` Datums) in
Caffe's BGR channel order. Sources iterate in a fixed order and can cycle, as Caffe's readers
restart from the first record at the end of the database.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from dnntool.errors import FormatError, SourceLoc
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


class LmdbSource:
    """Datums of an LMDB in key order (what Caffe's Data layer reads)."""

    def __init__(self, path: str | os.PathLike[str], force_color: bool = False, force_gray: bool = False):
        from dnntool.io.datadb import is_lmdb, open_lmdb

        self.path = str(path)
        if not Path(path).exists():
            raise FormatError("no such LMDB", SourceLoc(self.path))
        if not is_lmdb(path):
            raise FormatError("not an LMDB (no data.mdb; LevelDB is not supported)", SourceLoc(self.path))
        self.env = open_lmdb(path)
        self.force_color = force_color
        self.force_gray = force_gray
        self.size = int(self.env.stat()["entries"])
        if not self.size:
            raise FormatError("database is empty", SourceLoc(self.path))

    def __len__(self) -> int:
        return self.size

    def records(self, cycle: bool = False) -> Iterator[Record]:
        """Records in key order; with ``cycle`` restart from the first one at the end, forever."""
        while True:
            with self.env.begin(buffers=False) as txn:
                for key, value in txn.cursor():
                    k = key.decode("utf-8", "replace")
                    data, label = datum_array(value, k, self.path, self.force_color, self.force_gray)
                    yield Record(k, data, float(label))
            if not cycle:
                return

    def chunks(self, n: int) -> Iterator[tuple[list[str], np.ndarray | list[np.ndarray], np.ndarray]]:
        """Endless groups of ``n`` records in key order, wrapping: (keys, data, labels).

        ``data`` is one N x C x H x W uint8 array when the group is raw Datums of one shape (their
        bytes joined once: the cheap path the feeder takes), else a list of C x H x W arrays.
        """
        from dnntool.io.datadb import parse_datum

        from_string = caffe_pb2.Datum.FromString
        with self.env.begin(buffers=False) as txn:
            items = _endless(txn)
            while True:
                keys, labels, parts, shapes = [], [], [], []
                joinable = True
                for _ in range(n):
                    k, v = next(items)
                    try:
                        d = from_string(v)
                    except DecodeError:
                        d = parse_datum(v, k.decode("utf-8", "replace"), self.path)  # raises, naming the key
                    shape = (d.channels, d.height, d.width)
                    raw = d.data
                    if raw and not d.encoded and len(raw) == shape[0] * shape[1] * shape[2]:
                        parts.append(raw)
                        joinable = joinable and (not shapes or shape == shapes[0])
                    else:
                        joinable = False
                        parts.append(decode_datum(d, k.decode("utf-8", "replace"), self.path,
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
        self.env.close()


def _endless(txn) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) pairs of a transaction in key order, restarting at the first after the last."""
    while True:
        yield from txn.cursor()


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

    def records(self, cycle: bool = False) -> Iterator[Record]:
        """Records in list order (shuffled per pass when ``shuffle``), cycling when asked."""
        while True:
            order = self.rng.permutation(len(self.lines)) if self.shuffle else range(len(self.lines))
            for i in order:
                name, label = self.lines[i]
                yield Record(name, self.read(name), float(label))
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
