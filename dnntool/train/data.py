"""Batches for every data layer of a training or test net, resumable at any batch.

``Data`` (LMDB) and ``ImageData`` layers read their source in order (wrapping at the end, as
Caffe's readers do) through the data package's sources and DataTransformer, with batches made
ahead in a background thread. Random crops and mirrors (TRAIN) draw from a generator seeded by
(seed, layer, batch number), so batch k is the same whether the run started at 0 or resumed at k:
resuming from a solverstate continues the data stream exactly. ``MemoryData``, ``Input`` and
``DummyData`` tops are fed from numpy arrays (or callables) a library user passes; ``DummyData``
without arrays fills from its ``data_filler``; ``HDF5Data`` reads its files when h5py is installed.
A ``Data`` source may name several LMDB shards (``A,B`` or ``DB@K``), read round-robin. For
data-parallel training, rank r of a world of n processes reads every n-th record (or batch) from
r on: together the ranks read what one process reads n batches at a time (``net_data``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np

from dnntool.data.prefetch import Prefetcher
from dnntool.errors import FormatError, NetError
from dnntool.net import Net

#: what a library user may pass for a top: all samples (batches are taken in order, wrapping),
#: or a function of the batch number returning one batch
ArrayFeed = np.ndarray | Callable[[int], np.ndarray]


class SourceStream:
    """A Data or ImageData layer: transformed (data, label) batches from batch ``start`` on.

    Rank ``rank`` of ``world`` reads records rank, rank + world, rank + 2 world, ... of the
    single-process stream (its batch k holds positions rank + world (k batch + i)), so batch k of
    all ranks together is batches k world ... k world + world - 1 of one process; the records
    between are stepped over, not decoded. Crops and mirrors of batch k draw from (seed, layer,
    k world + rank).
    """

    def __init__(self, layer, net_path: str | None, phase: str, seed: int, ordinal: int, start: int = 0,
                 prefetch: int = 4, rank: int = 0, world: int = 1):
        from dnntool.data.feeder import source_for_layer
        from dnntool.data.transform import Transformer

        self.layer = layer
        self.source = source_for_layer(layer, net_path, seed)
        try:
            from dnntool.data.feeder import resolve_path

            self.transformer = Transformer.from_param(
                layer.param.transform_param, phase, lambda p: resolve_path(p, net_path),
                where=f"layer '{layer.name}' ({layer.type}) transform_param")
        except BaseException:
            self.source.close()
            raise
        self.batch = int(layer.top_shapes[0][0])
        self.seed, self.ordinal, self.rank, self.world = seed, ordinal, rank, world
        self._records = self.source.records(cycle=True, start=rank + world * start * self.batch, stride=world)
        self._lock = threading.Lock()
        self._prefetch = Prefetcher(self._make, start, prefetch, "dnntool-train-data")

    def _make(self, k: int) -> list[np.ndarray]:
        from dnntool.data.feeder import assemble

        with self._lock:
            recs = [next(self._records) for _ in range(self.batch)]
        rng = (np.random.default_rng([self.seed, self.ordinal, k * self.world + self.rank])
               if self.transformer.random else None)
        b = assemble([r.key for r in recs], [r.data for r in recs], [r.label for r in recs], self.transformer,
                     rng, tuple(self.layer.top_shapes[0][1:]), getattr(self.source, "path", None), k)
        return [b.data, b.label]

    def next(self) -> list[np.ndarray]:
        return self._prefetch.next()

    def close(self) -> None:
        self._prefetch.close(timeout=5)
        self.source.close()


class ArrayStream:
    """Tops fed from arrays (batches in order, wrapping, as MemoryData) or from callables.
    Rank ``rank`` of ``world`` takes batches rank, rank + world, ... of that sequence."""

    def __init__(self, layer, feeds: list[ArrayFeed], start: int = 0, rank: int = 0, world: int = 1):
        self.layer, self.feeds, self.k, self.rank, self.world = layer, feeds, start, rank, world
        for top, f, shape in zip(layer.top_names, feeds, layer.top_shapes, strict=True):
            if not callable(f) and (np.ndim(f) < 1 or len(f) == 0):
                raise NetError(f"layer '{layer.name}' ({layer.type}): the array for top '{top}' is empty"
                               f" (expected samples of shape {list(shape[1:])})", layer=layer.name)

    def next(self) -> list[np.ndarray]:
        out = []
        k = self.k * self.world + self.rank
        for f, shape in zip(self.feeds, self.layer.top_shapes, strict=True):
            if callable(f):
                out.append(np.asarray(f(k), np.float32))
                continue
            n = int(shape[0]) if shape else 1
            idx = (np.arange(n) + k * n) % len(f)
            out.append(np.asarray(f, np.float32)[idx])
        self.k += 1
        return out

    def close(self) -> None:
        pass


class DummyStream:
    """DummyData: each top from its data_filler (constant ones filled once, others every batch).
    Rank ``rank`` of ``world`` takes batches rank, rank + world, ... of that sequence."""

    def __init__(self, layer, seed: int, ordinal: int, start: int = 0, rank: int = 0, world: int = 1):
        from dnntool.proto import caffe_pb2

        p = layer.param.dummy_data_param
        fillers = list(p.data_filler) or [caffe_pb2.FillerParameter()]
        if len(fillers) not in (1, len(layer.tops)):
            raise NetError(f"layer '{layer.name}' (DummyData): {len(fillers)} data_filler for"
                           f" {len(layer.tops)} tops (give 1 or {len(layer.tops)})", layer=layer.name)
        self.layer, self.seed, self.ordinal, self.k, self.rank, self.world = layer, seed, ordinal, start, rank, world
        self.fillers = [fillers[0] if len(fillers) == 1 else fillers[i] for i in range(len(layer.tops))]

    def next(self) -> list[np.ndarray]:
        from dnntool.net.fillers import fill

        rng = np.random.default_rng([self.seed, self.ordinal, self.k * self.world + self.rank])
        self.k += 1
        return [fill(f, tuple(s), rng, f"layer '{self.layer.name}' top {i}")
                for i, (f, s) in enumerate(zip(self.fillers, self.layer.top_shapes, strict=True))]

    def close(self) -> None:
        pass


class HDF5Stream:
    """HDF5Data: the datasets named by the tops, file after file of ``source`` (needs h5py).
    With ``shuffle`` the file order and the rows of each file are permuted on every pass. Rank
    ``rank`` of ``world`` takes batches rank, rank + world, ... of that sequence."""

    def __init__(self, layer, net_path: str | None, seed: int, start: int = 0, rank: int = 0, world: int = 1):
        try:
            import h5py
        except ImportError:
            raise NetError(f"layer '{layer.name}' (HDF5Data) needs h5py (pip install h5py)",
                           layer=layer.name) from None
        from dnntool.data.feeder import resolve_path

        self.h5py, self.layer = h5py, layer
        p = layer.param.hdf5_data_param
        listing = resolve_path(p.source, net_path)
        try:
            lines = Path(listing).read_text().splitlines()
        except OSError as e:
            raise FormatError(f"layer '{layer.name}' (HDF5Data) source '{p.source}': {e.strerror or e}") from None
        self.files = [resolve_path(ln.strip(), net_path) for ln in lines if ln.strip()]
        if not self.files:
            raise FormatError(f"layer '{layer.name}' (HDF5Data) source '{p.source}' lists no files")
        self.shuffle, self.rng = bool(p.shuffle), np.random.default_rng(seed)
        self.batch = int(layer.top_shapes[0][0])
        self.skip = (world - 1) * self.batch  # rows of the other ranks' batches after each of ours
        self._rows = self._row_iter((start * world + rank) * self.batch)

    def _load(self, path: str) -> list[np.ndarray]:
        with self.h5py.File(path, "r") as f:
            missing = [t for t in self.layer.top_names if t not in f]
            if missing:
                raise FormatError(f"layer '{self.layer.name}' (HDF5Data): '{path}' has no dataset"
                                  f" '{missing[0]}'")
            return [np.asarray(f[t], np.float32) for t in self.layer.top_names]

    def _sizes(self) -> list[int]:
        out = []
        for path in self.files:
            with self.h5py.File(path, "r") as f:
                out.append(int(f[self.layer.top_names[0]].shape[0]))
        return out

    def _row_iter(self, skip: int) -> Iterator[list[np.ndarray]]:
        sizes = self._sizes()
        while True:
            order = self.rng.permutation(len(self.files)) if self.shuffle else range(len(self.files))
            for i in order:
                rows = self.rng.permutation(sizes[i]) if self.shuffle else np.arange(sizes[i])
                if skip >= sizes[i]:
                    skip -= sizes[i]
                    continue
                arrays = self._load(self.files[i])
                for r in rows[skip:]:
                    yield [a[r] for a in arrays]
                skip = 0

    def next(self) -> list[np.ndarray]:
        rows = [next(self._rows) for _ in range(self.batch)]
        for _ in range(self.skip):
            next(self._rows)
        return [np.stack([r[j] for r in rows]) for j in range(len(self.layer.tops))]

    def close(self) -> None:
        pass


class NetData:
    """One batch for every data top of a net per ``next()``: {graph input name: array}."""

    def __init__(self, net: Net, streams: list):
        self.net, self.streams = net, streams

    def next(self) -> dict[str, np.ndarray]:
        out = {}
        for layer, stream in self.streams:
            for tid, shape, arr in zip(layer.tops, layer.top_shapes, stream.next(), strict=False):
                arr = np.asarray(arr, np.float32)
                if arr.size != int(np.prod(shape)):
                    raise NetError(f"layer '{layer.name}' ({layer.type}): a batch for top"
                                   f" '{self.net.blobs[tid].name}' has shape {list(arr.shape)}, the net"
                                   f" declares {list(shape)}", layer=layer.name)
                out[tid] = np.ascontiguousarray(arr.reshape(shape))
        return out

    def close(self) -> None:
        for _, stream in self.streams:
            stream.close()

    def __enter__(self) -> NetData:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _user_feeds(layer, data: Mapping[str, ArrayFeed] | None) -> list[ArrayFeed] | None:
    """The user's arrays for a layer's tops (by top name, or by layer name for its first top)."""
    if not data:
        return None
    feeds = [data.get(t) for t in layer.top_names]
    if feeds and feeds[0] is None and layer.name in data:
        feeds[0] = data[layer.name]
    if all(f is None for f in feeds):
        return None
    missing = [t for t, f in zip(layer.top_names, feeds, strict=True) if f is None]
    if missing:
        raise NetError(f"layer '{layer.name}' ({layer.type}): arrays were given for some of its tops but"
                       f" not for {', '.join(repr(m) for m in missing)}", layer=layer.name)
    return feeds


def net_data(net: Net, phase: str, seed: int, data: Mapping[str, ArrayFeed] | None = None,
             start: int = 0, prefetch: int = 4, net_path: str | None = None, rank: int = 0,
             world: int = 1) -> NetData:
    """Streams for every data layer of ``net`` whose tops feed it, positioned at batch ``start``.

    Args:
        data: arrays (N x ...) or callables (batch number -> batch) by top name, for MemoryData,
            Input and DummyData layers (and to override any other data layer).
        start: the first batch number of this rank (resuming: iterations done x iter_size).
        rank, world: this process's share of a data-parallel run. Data and ImageData layers read
            records rank, rank + world, ... of the single-process stream (batch ``start`` begins at
            record rank + world x start x batch_size); arrays, callables, DummyData and HDF5Data
            give rank r batch k = single-process batch k x world + r. Either way batch k of all
            ranks together holds the records of single-process batches k x world ... k x world +
            world - 1 (what iter_size = world would see). world 1 is the single-process stream.

    Raises:
        NetError: a data layer that cannot be fed, naming it and what to pass; a rank outside
            [0, world).
    """
    if world < 1 or not 0 <= rank < world:
        raise NetError(f"rank {rank} of world {world}: expected world >= 1 and 0 <= rank < world")
    consumed = {b for layer in net.layers for b in layer.bottoms}
    streams: list = []
    try:
        for ordinal, layer in enumerate(net.layers):
            if not layer.impl.is_data or not any(t in consumed for t in layer.tops):
                continue
            feeds = _user_feeds(layer, data)
            if feeds is not None:
                streams.append((layer, ArrayStream(layer, feeds, start, rank, world)))
            elif layer.type in ("Data", "ImageData"):
                streams.append((layer, SourceStream(layer, net_path or net.source, phase, seed, ordinal,
                                                    start, prefetch, rank, world)))
            elif layer.type == "DummyData":
                streams.append((layer, DummyStream(layer, seed, ordinal, start, rank, world)))
            elif layer.type == "HDF5Data":
                streams.append((layer, HDF5Stream(layer, net_path or net.source, seed, start, rank, world)))
            else:
                tops = ", ".join(repr(t) for t in layer.top_names)
                raise NetError(f"layer '{layer.name}' ({layer.type}) has no source to read: pass arrays"
                               f" for its tops ({tops}) with data={{top: array}}", layer.loc,
                               layer=layer.name)
    except BaseException:
        for _, s in streams:
            s.close()
        raise
    return NetData(net, streams)
