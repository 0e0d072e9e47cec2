"""Batches of (data, label) for a data layer, transformed and prefetched in a background thread.

The order is deterministic: one producer reads the source in order (wrapping around at its end, as
Caffe's DataReader does) and draws TRAIN-phase random crops/mirrors from one seeded generator, so
the same seed gives the same batches whether or not prefetching is on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dnntool.data.prefetch import Prefetcher
from dnntool.data.sources import ImageListSource, LmdbSource, Record
from dnntool.data.transform import Transformer
from dnntool.errors import FormatError, NetError, SourceLoc
from dnntool.layers.base import format_shape


@dataclass
class Batch:
    """One batch: data N x C x h x w float32, labels (N,) float32, the records' keys."""

    data: np.ndarray
    label: np.ndarray
    keys: list[str] = field(default_factory=list)
    index: int = 0  # 0-based batch number




def assemble(keys: list[str], data: np.ndarray | list[np.ndarray], labels, transformer: Transformer,
             rng: np.random.Generator | None, expect: tuple[int, ...] | None = None,
             where: str | None = None, index: int = 0) -> Batch:
    """Transform a group of records (one N x C x H x W array, or same-shaped C x H x W arrays)
    and check the result against ``expect`` (C, h, w)."""
    if not isinstance(data, np.ndarray):
        first = data[0].shape
        for k, x in zip(keys[1:], data[1:], strict=True):
            if x.shape != first:
                raise FormatError(f"record '{k}' is {format_shape(x.shape)} but record '{keys[0]}' of the same"
                                  f" batch is {format_shape(first)}", SourceLoc(where))
        data = np.stack(data)
    try:
        out = transformer.batch(data, rng, where=f"record '{keys[0]}'")
    except FormatError as e:
        raise FormatError(e.message, SourceLoc(where)) from None
    if expect is not None and tuple(out.shape[1:]) != tuple(expect):
        raise FormatError(
            f"record '{keys[0]}' gives a {format_shape(out.shape[1:])} input but the net's data top is"
            f" {format_shape(expect)} (the first record sets it, as in Caffe)", SourceLoc(where),
        )
    return Batch(out, np.asarray(labels, np.float32), list(keys), index)


class Feeder:
    """An endless stream of batches from ``source``; ``prefetch`` batches are made ahead in a thread.

    Use as a context manager (or call ``close``) so the thread stops. ``prefetch=0`` makes batches
    on demand in the caller's thread. ``prepare`` (e.g. a resize) runs on each record first.
    """

    def __init__(self, source, transformer: Transformer, batch_size: int,
                 expect: tuple[int, ...] | None = None, seed: int = 0, prefetch: int = 4,
                 prepare: Callable[[Record], Record] | None = None):
        if batch_size <= 0:
            raise NetError(f"batch_size must be positive, got {batch_size}")
        self.source = source
        self.transformer = transformer
        self.batch_size = int(batch_size)
        self.expect = tuple(expect) if expect is not None else None
        self.rng = np.random.default_rng(seed)
        self.prepare = prepare
        # raw LMDB groups come joined in one array; other sources go record by record
        self._chunks = source.chunks(self.batch_size) if prepare is None and hasattr(source, "chunks") else None
        self._records = source.records(cycle=True) if self._chunks is None else None
        self._pf: Prefetcher[Batch] = Prefetcher(self._make, 0, prefetch, "dnntool-feeder")

    def _make(self, index: int) -> Batch:
        if self._chunks is not None:
            keys, data, labels = next(self._chunks)
        else:
            recs = [next(self._records) for _ in range(self.batch_size)]
            if self.prepare is not None:
                recs = [self.prepare(r) for r in recs]
            keys, data, labels = [r.key for r in recs], [r.data for r in recs], [r.label for r in recs]
        return assemble(keys, data, labels, self.transformer, self.rng, self.expect,
                        getattr(self.source, "path", None), index)

    def next(self) -> Batch:
        """The next batch (waits for the producer when it is behind)."""
        try:
            return self._pf.next()
        except BaseException:
            if self._pf.threaded:
                self.close()
            raise

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.next()

    def close(self) -> None:
        """Stop the producer thread and release the source."""
        if not self._pf.close():  # stuck in a read: leave the source open rather than pull it away
            return
        try:
            for gen in (self._chunks, self._records):
                if gen is not None:
                    gen.close()
        except ValueError:  # the generator is running in the producer (close from inside it)
            return
        self.source.close()

    def __enter__(self) -> Feeder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- data layers -------------------------------------------------------------------------------------
def resolve_path(path: str, net_path: str | None) -> str:
    """A path as Caffe opens it (relative to the cwd), else relative to the prototxt's folder."""
    p = Path(path)
    if p.exists() or p.is_absolute() or not net_path:
        return str(p)
    q = Path(net_path).resolve().parent / path
    return str(q) if q.exists() else str(p)


def resolve_source(source: str, net_path: str | None) -> list[str]:
    """The databases a Data layer's source names (one path, ``A,B,...`` or ``DB@K``: see
    ``dnntool.io.shards``), each resolved as ``resolve_path`` does."""
    from dnntool.io.shards import source_paths

    return [resolve_path(p, net_path)
            for p in source_paths(source, lambda p: Path(resolve_path(p, net_path)).exists())]


FEEDABLE = ("Data", "ImageData")


def source_for_layer(layer, net_path: str | None, seed: int = 0):
    """The record source of a Data or ImageData layer (a built Net's Layer)."""
    lp = layer.param
    if layer.type == "Data":
        dp = lp.data_param
        if not dp.source:
            raise NetError(f"layer '{layer.name}' (Data) has no data_param.source", layer.loc, layer=layer.name)
        try:
            return LmdbSource(resolve_source(dp.source, net_path),
                              force_color=lp.transform_param.force_color or dp.force_encoded_color,
                              force_gray=lp.transform_param.force_gray)
        except FormatError as e:
            raise FormatError(f"layer '{layer.name}' (Data) source '{dp.source}': {e}") from None
    if layer.type == "ImageData":
        ip = lp.image_data_param
        return ImageListSource(resolve_path(ip.source, net_path), ip.root_folder, ip.new_height,
                               ip.new_width, ip.is_color, ip.shuffle, seed)
    raise NetError(
        f"layer '{layer.name}' ({layer.type}) cannot be fed: data layers of type"
        f" {' or '.join(FEEDABLE)} are supported", layer.loc, layer=layer.name,
    )


def feeder_for_layer(layer, net_path: str | None, phase: int | str = "test", seed: int = 0,
                     prefetch: int = 4) -> Feeder:
    """A Feeder producing the tops of a built data layer, at the batch size and shape it declares."""
    source = source_for_layer(layer, net_path, seed)
    try:
        transformer = Transformer.from_param(
            layer.param.transform_param, phase, lambda p: resolve_path(p, net_path),
            where=f"layer '{layer.name}' ({layer.type}) transform_param",
        )
    except BaseException:
        source.close()
        raise
    shape = layer.top_shapes[0]
    return Feeder(source, transformer, shape[0], tuple(shape[1:]), seed=seed, prefetch=prefetch)

