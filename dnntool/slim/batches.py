"""Inputs for the slimming commands (random, an LMDB or images through the input layer's transform,
or the net's own Data layer) and ONNX Runtime runs that keep the outputs and time each model."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from dnntool.errors import DnnToolError, UsageError
from dnntool.net import Net


# -- batches --------------------------------------------------------------------------------------
def input_layer(net: Net):
    """The data layer whose first top feeds the net (the image input)."""
    feeds = [layer for layer in net.layers if layer.impl.is_data and layer.tops
             and net.blobs[layer.tops[0]].consumers]
    if not feeds:
        raise DnnToolError(f"net '{net.name}' has no input layer")
    return feeds[0]


def random_batches(net: Net, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` batches for every data top: image tops N(0, 1), other tops (labels) zeros."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        feeds = {}
        for layer in net.layers:
            if not layer.impl.is_data:
                continue
            for j, tid in enumerate(layer.tops):
                shape = net.blobs[tid].shape
                feeds[tid] = (rng.standard_normal(shape).astype(np.float32) if j == 0
                              else np.zeros(shape, np.float32))
        out.append(feeds)
    return out


def db_batches(net: Net, count: int, db: str | os.PathLike[str] | None = None,
               images: Sequence[str] | None = None) -> list[dict[str, np.ndarray]]:
    """``count`` batches of real data through the input layer's TEST-phase transform.

    From ``db`` (an LMDB of Datums) or ``images`` when given, else from the net's own Data/ImageData
    layer. Records are resized to the input when their size differs (as featuremap-dump does).
    """
    from dnntool.data.feeder import Feeder, feeder_for_layer
    from dnntool.data.sources import ImageFilesSource, LmdbSource
    from dnntool.tools.featuremaps import Preprocess, make_prepare, make_transform

    layer = input_layer(net)
    if db is None and images is None:
        if layer.type not in ("Data", "ImageData"):
            raise UsageError(f"net '{net.name}' reads its input from a {layer.type} layer: give a"
                             " database (LMDB) to take batches from")
        feeder = feeder_for_layer(layer, net.source, "test", prefetch=0)
    else:
        c = layer.top_shapes[0][1]
        transformer, size = make_transform(layer, Preprocess(), net.source)
        source = (LmdbSource(db, transformer.force_color, transformer.force_gray) if db is not None
                  else ImageFilesSource(images, is_color=c != 1))
        feeder = Feeder(source, transformer, layer.top_shapes[0][0], tuple(layer.top_shapes[0][1:]),
                        prefetch=0, prepare=make_prepare(size, c, False))
    label = layer.tops[1] if len(layer.tops) > 1 else None
    out = []
    with feeder:
        for _ in range(count):
            b = feeder.next()
            feeds = {layer.tops[0]: b.data}
            if label is not None:
                feeds[label] = b.label.reshape(net.blobs[label].shape)
            out.append(feeds)
    return out


def load_test_net(path: str | os.PathLike[str], input_shapes=None, db: str | os.PathLike[str] | None = None) -> Net:
    """The TEST net of ``path``; when its Data layer's source is absent here, read through ``db``
    (the database the command was given) instead."""
    from dnntool.errors import NeedsInputShape

    try:
        return Net.from_prototxt(path, "test", input_shapes=input_shapes)
    except NeedsInputShape:
        if db is None:
            raise
        return read_with_source(path, db, input_shapes)


def read_with_source(path: str | os.PathLike[str], db: str | os.PathLike[str], input_shapes=None) -> Net:
    """The TEST net of prototxt ``path`` with its Data layers reading ``db`` (their own source may
    not exist here: its first record would otherwise give the input shape)."""
    from dnntool.io.prototxt import read_net

    src = read_net(path)
    if not any(lp.type == "Data" for lp in src.param.layer):
        raise UsageError(f"{path}: the net has no Data layer to read '{db}' through (its transform_param"
                         " gives the preprocessing)")
    for lp in src.param.layer:
        if lp.type == "Data":
            lp.data_param.source = str(db)
    return Net.from_param(src.param, "test", input_shapes=input_shapes, layer_locs=src.layer_locs, path=str(path))


def with_data_source(net: Net, db: str | os.PathLike[str]) -> Net:
    """The net rebuilt with its TEST-phase Data layers reading ``db`` (``--test-db``/``--calib-db``)."""
    param = type(net.param_proto)()
    param.CopyFrom(net.param_proto)
    names = {layer.name for layer in net.layers if layer.type == "Data"}
    if not names:
        raise UsageError(f"net '{net.name}' has no Data layer to read '{db}' through (its transform_param"
                         " gives the preprocessing)")
    for lp in param.layer:
        if lp.name in names:
            lp.data_param.source = str(db)
    shapes = {layer.tops[0]: layer.top_shapes[0] for layer in net.layers
              if layer.impl.is_data and layer.type not in ("Data", "ImageData")}
    return Net.from_param(param, net.phase, input_shapes=shapes, path=net.source)


# -- timing ---------------------------------------------------------------------------------------
@dataclass
class Run:
    """A model run over the batches: median ms per batch, the provider, each output per batch."""

    ms: float
    provider: str
    outputs: dict[str, list[np.ndarray]]


def run_model(model, batches: Sequence[Mapping[str, np.ndarray]], outputs: Sequence[str] | None = None,
              device: str = "auto", repeat: int = 3, threads: int | None = None) -> Run:
    """Run ``model`` (ModelProto, bytes or path) on every batch once, then time ``repeat`` rounds."""
    return run_models([model], batches, [outputs], device, repeat, threads)[0]


def run_models(models: Sequence, batches: Sequence[Mapping[str, np.ndarray]],
               outputs: Sequence[Sequence[str] | None] | None = None, device: str = "auto", repeat: int = 3,
               threads: int | None = None) -> list[Run]:
    """Each model in turn: run every batch once (keeping the outputs), then time ``repeat`` rounds;
    median ms per batch. One session lives at a time: an idle ONNX Runtime session's threads spin
    for a while after each run and would slow the other one down."""
    from dnntool.onnxgraph.runtime import make_session

    runs = []
    for k, model in enumerate(models):
        sess, provider = make_session(model, device, threads)
        names = [i.name for i in sess.get_inputs()]
        want = outputs[k] if outputs is not None else None
        outs = list(want) if want is not None else [o.name for o in sess.get_outputs()]
        missing = [n for n in names if n not in batches[0]]
        if missing:
            raise DnnToolError(f"the model's input(s) {', '.join(missing)} are not fed (inputs given:"
                               f" {', '.join(batches[0])})")
        feeds = [{n: b[n] for n in names} for b in batches]
        results: dict[str, list[np.ndarray]] = {o: [] for o in outs}
        for f in feeds:
            for o, v in zip(outs, sess.run(outs, f), strict=True):
                results[o].append(v)
        times = []
        for _ in range(max(0, repeat)):
            for f in feeds:
                t0 = time.perf_counter()
                sess.run(outs, f)
                times.append(time.perf_counter() - t0)
        del sess
        runs.append(Run(statistics.median(times) * 1e3 if times else 0.0, provider, results))
    return runs
