"""BlobProto <-> numpy, and the ``.binaryproto`` mean-file format."""

from __future__ import annotations

import math
import os

import numpy as np
from google.protobuf.message import DecodeError

from dnntool.errors import FormatError, SourceLoc
from dnntool.io.atomic import write_bytes
from dnntool.io.datadb import bytes_field
from dnntool.proto import caffe_pb2

_LEGACY = ("num", "channels", "height", "width")


def blob_shape(blob: caffe_pb2.BlobProto) -> tuple[int, ...]:
    """The blob's shape: ``shape.dim`` or, for old files, the 4-D num/channels/height/width."""
    if any(blob.HasField(f) for f in _LEGACY):
        return tuple(int(getattr(blob, f)) for f in _LEGACY)
    return tuple(int(d) for d in blob.shape.dim)


def blob_to_array(blob: caffe_pb2.BlobProto, where: str = "blob") -> np.ndarray:
    """Decode a BlobProto to a float32 (or float64 for ``double_data``) array of its shape."""
    shape = blob_shape(blob)
    if len(blob.double_data):
        arr = np.array(blob.double_data, dtype=np.float64)
    else:
        arr = np.array(blob.data, dtype=np.float32)
    if not shape:  # shapeless blobs (an empty one included) are 1-D
        shape = (arr.size,)
    if any(d < 0 for d in shape):
        raise FormatError(f"{where}: negative dimension in shape {list(shape)}")
    count = math.prod(shape)
    if arr.size != count:
        raise FormatError(f"{where}: shape {list(shape)} holds {count} values but the file has {arr.size}")
    return arr.reshape(shape)


def array_to_blob(arr: np.ndarray, legacy: bool = False) -> caffe_pb2.BlobProto:
    """Encode an array as a BlobProto (``shape`` field, or legacy 4-D fields when ``legacy``)."""
    a = np.asarray(arr)
    blob = caffe_pb2.BlobProto()
    if legacy:
        dims = (1,) * (4 - a.ndim) + tuple(a.shape) if a.ndim <= 4 else None
        if dims is None:
            raise ValueError(f"legacy blobs hold at most 4 axes, got shape {a.shape}")
        for f, d in zip(_LEGACY, dims, strict=True):
            setattr(blob, f, int(d))
    else:
        blob.shape.dim.extend(int(d) for d in a.shape)
    # Merge the packed field's wire bytes: extending a repeated field value by value takes seconds
    # and gigabytes for a 70 MB blob.
    field, dtype = ("double_data", "<f8") if a.dtype == np.float64 else ("data", "<f4")
    if a.size:
        payload = np.ascontiguousarray(a, dtype=dtype).tobytes()
        number = caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name[field].number
        blob.MergeFromString(bytes_field(number, payload))
    return blob



def read_binaryproto(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a ``.binaryproto`` (e.g. mean.binaryproto) as an array of its stored shape (often 1xCxHxW)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FormatError("no such file (expected a .binaryproto)", SourceLoc(str(path))) from None
    except OSError as e:
        raise FormatError(f"cannot read: {e.strerror}", SourceLoc(str(path))) from None
    if not data:
        raise FormatError("empty file (expected a .binaryproto)", SourceLoc(str(path)))
    blob = caffe_pb2.BlobProto()
    try:
        blob.ParseFromString(data)
    except DecodeError as e:
        raise FormatError(f"truncated or corrupt .binaryproto ({e})", SourceLoc(str(path))) from None
    if not blob_shape(blob) and not len(blob.data) and not len(blob.double_data):
        raise FormatError("not a BlobProto: no shape and no data", SourceLoc(str(path)))
    try:
        return blob_to_array(blob, "blob")
    except FormatError as e:
        raise FormatError(e.message, SourceLoc(str(path))) from None


def write_binaryproto(path: str | os.PathLike[str], arr: np.ndarray, legacy: bool = True) -> None:
    """Write an array as ``.binaryproto``; ``legacy`` fills num/channels/height/width as Caffe's tools do."""
    write_bytes(path, array_to_blob(arr, legacy=legacy).SerializeToString())
