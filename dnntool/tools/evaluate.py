"""Score a net over its own TEST-phase data layer on ONNX Runtime: the library half of ``dnntool test``.

As ``caffe test``: N forward passes, each output's elements averaged over the iterations, the
iteration loss is the sum of loss_weight x top over loss-weighted tops, and the summary is
``Loss: L`` then ``name = mean`` with `` (* w = w*mean loss)`` for weighted outputs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dnntool.errors import DnnToolError, NetError, UsageError
from dnntool.net import Net


def fmt(x: float) -> str:
    """A number as C++ streams print a float (6 significant digits, %g)."""
    return f"{float(np.float32(x)):.6g}"


@dataclass
class Score:
    """One output blob: the mean of each of its elements over the iterations."""

    name: str
    values: list[float]
    loss_weight: float = 0.0


@dataclass
class EvalResult:
    """What ``evaluate`` measured."""

    model: str
    provider: str
    iterations: int
    batch_size: int
    loss: float
    scores: list[Score] = field(default_factory=list)
    seconds: float = 0.0  # the scoring loop, session creation excluded

    @property
    def images(self) -> int:
        return self.iterations * self.batch_size

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def header(self) -> str:
        return (f"Running for {self.iterations} iterations of batch {self.batch_size}"
                f" ({self.images} images) on {self.provider}.")

    def caffe_lines(self) -> list[str]:
        """``caffe test``'s summary: the loss, then one line per output element."""
        lines = [f"Loss: {fmt(self.loss)}"]
        for s in self.scores:
            for v in s.values:
                tail = f" (* {fmt(s.loss_weight)} = {fmt(s.loss_weight * v)} loss)" if s.loss_weight else ""
                lines.append(f"{s.name} = {fmt(v)}{tail}")
        return lines

    def to_dict(self) -> dict:
        """The same numbers as the text, as float32 values print (shortest repr)."""
        outputs = []
        for s in self.scores:
            vals = [_f32(v) for v in s.values]
            o: dict = {"name": s.name}
            if len(vals) == 1:
                o["value"] = vals[0]
            else:
                o["values"] = vals
            o["loss_weight"] = _f32(s.loss_weight)
            if s.loss_weight:
                o["weighted_loss"] = _f32(s.loss_weight * vals[0]) if len(vals) == 1 else [
                    _f32(s.loss_weight * v) for v in vals]
            outputs.append(o)
        return {"model": self.model, "provider": self.provider, "iterations": self.iterations,
                "batch_size": self.batch_size, "images": self.images, "seconds": round(self.seconds, 6),
                "images_per_s": round(self.images_per_s, 2), "loss": _f32(self.loss), "outputs": outputs}


def _f32(x: float) -> float:
    return float(str(np.float32(x)))


@dataclass
class _Plan:
    """A session with its feeds: one feeder per data layer, outputs to score, loss weights."""

    session: object
    provider: str
    feeders: list  # (feeder, data input name, label input name | None, label shape)
    outputs: list[str]  # session output names, in order
    names: list[str]  # their Caffe names
    weights: list[float]  # their loss weights
    shown: int  # the first ``shown`` outputs are printed; the rest only add to the loss


def _feeders(data_net: Net, wanted: Sequence[str], prefetch: int, seed: int) -> list:
    """Feeders for the data layers whose tops are among ``wanted`` graph inputs."""
    from dnntool.data.feeder import feeder_for_layer

    out = []
    try:
        for layer in data_net.layers:
            tops = [t for t in layer.tops if t in wanted]
            if not layer.impl.is_data or not tops:
                continue
            f = feeder_for_layer(layer, data_net.source, "test", seed=seed, prefetch=prefetch)
            label = layer.tops[1] if len(layer.tops) > 1 and layer.tops[1] in wanted else None
            out.append((f, layer.tops[0] if layer.tops[0] in wanted else None, label,
                        layer.top_shapes[1] if label else None))
    except BaseException:
        for f, *_ in out:
            f.close()
        raise
    return out


def _net_plan(net: Net, weights, device, prefetch: int, seed: int, threads: int | None) -> _Plan:
    from dnntool.onnxgraph.runtime import make_session
    from dnntool.tools.export import blob_label, loss_weights, translate

    tr = translate(net, weights, extra_loss=True)
    shown = len([o for o in tr.outputs if not net.blobs[o].consumers])
    feeders = _feeders(net, tr.inputs, prefetch, seed)  # prefetching starts while ORT builds
    try:
        sess, provider = make_session(tr.model, device, threads)
    except BaseException:
        for f, *_ in feeders:
            f.close()
        raise
    lw = loss_weights(net)
    return _Plan(sess, provider, feeders, list(tr.outputs), [blob_label(net, o) for o in tr.outputs],
                 [lw.get(o, 0.0) for o in tr.outputs], shown)


def _onnx_plan(path: str, data: str, device, prefetch: int, seed: int, threads: int | None,
               stages: Sequence[str], level: int) -> _Plan:
    import onnx

    from dnntool.onnxgraph.runtime import make_session
    from dnntool.tools.export import OUTPUTS_KEY, get_metadata, loss_weights

    try:
        model = onnx.load(path, load_external_data=True)
    except Exception as e:  # onnx raises DecodeError/OSError/...
        raise DnnToolError(f"{path}: cannot read the ONNX model: {' '.join(str(e).split())[:200]}") from None
    data_net = Net.from_prototxt(data, phase="test", stages=stages, level=level)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    tops = {t: layer for layer in data_net.layers if layer.impl.is_data for t in layer.tops}
    for i in inputs:
        if i.name not in tops:
            raise NetError(f"{path}: ONNX input '{i.name}' is not a top of a data layer in {data}"
                           f" (its data tops: {', '.join(tops) or 'none'})")
        want = [d.dim_value for d in i.type.tensor_type.shape.dim]
        have = list(tops[i.name].top_shapes[list(tops[i.name].tops).index(i.name)])
        if len(want) != len(have) or any(w and w != h for w, h in zip(want, have, strict=False)):
            raise NetError(f"{path}: ONNX input '{i.name}' is {want} but layer '{tops[i.name].name}' of"
                           f" {data} gives {have} (batch_size and crop must agree)")
    meta = {m["output"]: m for m in get_metadata(model, OUTPUTS_KEY) or [] if isinstance(m, dict)}
    lw = loss_weights(data_net)
    names, weights = [], []
    for o in model.graph.output:
        m = meta.get(o.name)
        if m is not None:
            names.append(str(m.get("blob", o.name)))
            weights.append(float(m.get("loss_weight", 0.0)))
        else:  # a model from elsewhere (e.g. quantized): take names and weights from the data net
            names.append(data_net.blobs[o.name].name if o.name in data_net.blobs else o.name)
            weights.append(lw.get(o.name, 0.0))
    feeders = _feeders(data_net, [i.name for i in inputs], prefetch, seed)
    try:
        sess, provider = make_session(model, device, threads)
    except BaseException:
        for f, *_ in feeders:
            f.close()
        raise
    outs = [o.name for o in model.graph.output]
    return _Plan(sess, provider, feeders, outs, names, weights, len(outs))


def evaluate(
    model: str | os.PathLike[str] | Net,
    weights=None,
    iterations: int = 50,
    device: str = "auto",
    data: str | os.PathLike[str] | None = None,
    stages: Sequence[str] = (),
    level: int = 0,
    input_shapes=None,
    seed: int = 0,
    prefetch: int = 4,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_batch: Callable[[int, list[tuple[str, float]]], None] | None = None,
    on_start: Callable[[str], None] | None = None,
) -> EvalResult:
    """Run ``iterations`` TEST-phase forward passes and average each output, as ``caffe test``.

    Args:
        model: a net prototxt (or built Net) with ``weights`` (caffemodel path or Weights), or an
            ``.onnx`` model whose inputs are tops of the data layer(s) of the ``data`` prototxt.
        iterations: batches to run; the data source wraps around at its end, as in Caffe.
        device: ``auto``, ``cpu`` or ``cuda[:N]``; the result names the provider that ran.
        progress: called with (done, total) after each batch.
        on_batch: called with (batch index, [(name, value)...]) for Caffe's per-batch lines.
        on_start: called with the header line (provider, batch, iterations) before the first batch.

    Raises:
        DnnToolError: bad files, weights that do not fit (naming the layer), unfeedable data layers.
    """
    from dnntool.tools.export import check_device

    if iterations <= 0:
        raise UsageError(f"--iterations must be positive, got {iterations}")
    check_device(device)
    path = model.source if isinstance(model, Net) else str(model)
    if not isinstance(model, Net) and str(model).endswith(".onnx"):
        if data is None:
            raise UsageError("an .onnx model needs --data PROTOTXT naming its data layer")
        if weights is not None:
            raise UsageError("--weights is for prototxt models; an .onnx model holds its weights")
        plan = _onnx_plan(str(model), str(data), device, prefetch, seed, threads, stages, level)
    else:
        if weights is None:
            raise UsageError("a prototxt model needs --weights (a .caffemodel)")
        net = model if isinstance(model, Net) else Net.from_prototxt(
            model, phase="test", stages=stages, level=level, input_shapes=input_shapes)
        plan = _net_plan(net, weights, device, prefetch, seed, threads)
    if not plan.feeders:
        raise NetError(f"{path}: the net has no Data or ImageData layer to read batches from")
    try:
        res = EvalResult(Path(str(path)).name if path else "net", plan.provider, iterations,
                         plan.feeders[0][0].batch_size, 0.0)
        if on_start is not None:
            on_start(res.header())
        return _run(plan, res, progress, on_batch)
    finally:
        for f, *_ in plan.feeders:
            f.close()


def _run(plan: _Plan, res: EvalResult, progress, on_batch) -> EvalResult:
    sums: list[np.ndarray] = []
    loss = 0.0
    iterations = res.iterations
    run = plan.session.run
    t0 = time.perf_counter()
    for i in range(iterations):
        feeds = {}
        for f, data_name, label_name, label_shape in plan.feeders:
            b = f.next()
            if data_name is not None:
                feeds[data_name] = b.data
            if label_name is not None:
                feeds[label_name] = b.label.reshape(label_shape)
        outs = run(plan.outputs, feeds)
        vals = [np.asarray(o, np.float64).reshape(-1) for o in outs]
        loss += sum(w * float(v.sum()) for w, v in zip(plan.weights, vals, strict=True) if w)
        if i == 0:
            sums = vals
        else:
            for s, v in zip(sums, vals, strict=True):
                s += v
        if on_batch is not None:
            on_batch(i, [(n, float(x)) for n, v in zip(plan.names[:plan.shown], vals, strict=False)
                         for x in v])
        if progress is not None:
            progress(i + 1, iterations)
    res.seconds = time.perf_counter() - t0
    res.scores = [Score(n, [float(x) for x in s / iterations], w)
                  for n, s, w in list(zip(plan.names, sums, plan.weights, strict=True))[:plan.shown]]
    res.loss = loss / iterations
    return res
