"""LMDB databases of Caffe ``Datum`` records (what convert_imageset writes and Data layers read)."""

from __future__ import annotations

import os
from pathlib import Path

from google.protobuf.message import DecodeError

from dnntool.errors import FormatError, SourceLoc
from dnntool.proto import caffe_pb2


def is_lmdb(path: str | os.PathLike[str]) -> bool:
    """True for an LMDB directory (holding data.mdb) or an LMDB file opened with subdir=False."""
    p = Path(path)
    return (p.is_dir() and (p / "data.mdb").exists()) or (p.is_file() and p.suffix == ".mdb")


def open_lmdb(path: str | os.PathLike[str]):
    """Open an LMDB read-only without locking (safe to share with a writer)."""
    import lmdb

    p = Path(path)
    try:
        return lmdb.open(str(p), readonly=True, lock=False, readahead=False, meminit=False,
                         subdir=p.is_dir(), max_readers=512)
    except lmdb.Error as e:
        raise FormatError(f"cannot open LMDB: {e}", SourceLoc(str(path))) from None


def parse_datum(value: bytes, key: bytes | str, path: str | None = None) -> caffe_pb2.Datum:
    """Parse one record; a corrupt one names the database and the key."""
    d = caffe_pb2.Datum()
    try:
        d.ParseFromString(value)
    except DecodeError as e:
        k = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        raise FormatError(f"record '{k}' is not a valid Datum: {e}", SourceLoc(path)) from None
    return d


def first_datum(path: str | os.PathLike[str]) -> caffe_pb2.Datum:
    """The first record of an LMDB of Datums (what Caffe's DataLayer reads to size its top)."""
    env = open_lmdb(path)
    try:
        with env.begin() as txn:
            cur = txn.cursor()
            if not cur.first():
                raise FormatError("database is empty", SourceLoc(str(path)))
            return parse_datum(cur.value(), cur.key(), str(path))
    finally:
        env.close()


def datum_shape(d: caffe_pb2.Datum) -> tuple[int, int, int]:
    """(channels, height, width) of a Datum, decoding encoded images when the header is empty."""
    if d.encoded and not (d.channels and d.height and d.width):
        import cv2
        import numpy as np

        img = cv2.imdecode(np.frombuffer(d.data, np.uint8), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise FormatError("encoded Datum cannot be decoded")
        return (1 if img.ndim == 2 else img.shape[2], img.shape[0], img.shape[1])
    return (d.channels, d.height, d.width)
