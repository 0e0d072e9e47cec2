"""Binary Caffe files: ``.caffemodel`` weights (V1 or current) and ``.solverstate``."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from google.protobuf.message import DecodeError

from dnntool.errors import FormatError, SourceLoc
from dnntool.io.atomic import write_bytes
from dnntool.io.blob import array_to_blob, blob_to_array
from dnntool.io.upgrade import upgrade_net
from dnntool.proto import caffe_pb2


def _read_binary(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FormatError(f"no such file (expected a {what})", SourceLoc(str(path))) from None
    except IsADirectoryError:
        raise FormatError(f"is a directory, expected a {what}", SourceLoc(str(path))) from None
    except OSError as e:
        raise FormatError(f"cannot read: {e.strerror}", SourceLoc(str(path))) from None
    if not data:
        raise FormatError(f"empty file (expected a {what})", SourceLoc(str(path)))
    return data


def _looks_like_text(data: bytes) -> bool:
    head = data[:512]
    return all(32 <= b < 127 or b in (9, 10, 13) for b in head)


def read_caffemodel(path: str | os.PathLike[str]) -> caffe_pb2.NetParameter:
    """Parse a ``.caffemodel`` (any size; V1 files are upgraded) into a NetParameter with blobs."""
    data = _read_binary(path, ".caffemodel")
    net = caffe_pb2.NetParameter()
    try:
        net.ParseFromString(data)
    except DecodeError as e:
        hint = " (this looks like a text prototxt)" if _looks_like_text(data) else ""
        raise FormatError(f"truncated or corrupt .caffemodel{hint}: {e}", SourceLoc(str(path))) from None
    if not net.layer and not net.layers:
        hint = " (this looks like a text prototxt)" if _looks_like_text(data) else ""
        raise FormatError(f"no layers found: not a .caffemodel{hint}", SourceLoc(str(path)))
    try:
        upgrade_net(net)
    except FormatError as e:
        raise FormatError(e.message, SourceLoc(str(path))) from None
    return net


@dataclass
class Weights:
    """Blobs of a caffemodel by layer name, in file order, plus each layer's type."""

    blobs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    path: str | None = None

    def __contains__(self, name: str) -> bool:
        return name in self.blobs

    def __getitem__(self, name: str) -> list[np.ndarray]:
        return self.blobs[name]

    def total(self) -> int:
        """Total number of stored values."""
        return sum(int(a.size) for arrs in self.blobs.values() for a in arrs)


def weights_from_netparameter(net: caffe_pb2.NetParameter, path: str | None = None) -> Weights:
    """Decode every layer's blobs. A layer name seen twice keeps its first blobs (as Caffe's copy)."""
    w = Weights(path=path)
    for layer in net.layer:
        if not layer.blobs or layer.name in w.blobs:
            continue
        arrays = []
        for i, b in enumerate(layer.blobs):
            try:
                arrays.append(blob_to_array(b, f"layer '{layer.name}' blob {i}"))
            except FormatError as e:
                raise FormatError(e.message, SourceLoc(path)) from None
        w.blobs[layer.name] = arrays
        w.types[layer.name] = layer.type
    return w


def load_weights(path: str | os.PathLike[str]) -> Weights:
    """Read a ``.caffemodel`` and return its blobs as numpy arrays by layer name."""
    return weights_from_netparameter(read_caffemodel(path), str(path))


def save_caffemodel(
    path: str | os.PathLike[str],
    layers: Sequence[caffe_pb2.LayerParameter],
    blobs: Mapping[str, Sequence[np.ndarray]],
    name: str = "",
) -> None:
    """Write a caffemodel: each layer's definition (as Caffe's Net::ToProto) with its blobs."""
    net = caffe_pb2.NetParameter(name=name)
    for lp in layers:
        out = net.layer.add()
        out.CopyFrom(lp)
        del out.blobs[:]
        for arr in blobs.get(lp.name, ()):
            out.blobs.append(array_to_blob(np.asarray(arr, dtype=np.float32)))
    write_bytes(path, net.SerializeToString())


def read_solverstate(path: str | os.PathLike[str]) -> caffe_pb2.SolverState:
    """Parse a ``.solverstate`` (iteration, learned_net, history blobs, current_step)."""
    data = _read_binary(path, ".solverstate")
    state = caffe_pb2.SolverState()
    try:
        state.ParseFromString(data)
    except DecodeError as e:
        raise FormatError(f"truncated or corrupt .solverstate: {e}", SourceLoc(str(path))) from None
    return state


def history_arrays(state: caffe_pb2.SolverState, path: str | None = None) -> list[np.ndarray]:
    """The solver history blobs (momentum etc.) as arrays."""
    try:
        return [blob_to_array(b, f"history blob {i}") for i, b in enumerate(state.history)]
    except FormatError as e:
        raise FormatError(e.message, SourceLoc(path)) from None


def write_solverstate(
    path: str | os.PathLike[str], iteration: int, learned_net: str,
    history: Sequence[np.ndarray], current_step: int = 0,
) -> None:
    """Write a ``.solverstate`` atomically."""
    state = caffe_pb2.SolverState(iter=iteration, learned_net=learned_net, current_step=current_step)
    for h in history:
        state.history.append(array_to_blob(np.asarray(h, dtype=np.float32)))
    write_bytes(path, state.SerializeToString())
