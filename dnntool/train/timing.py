"""Per-layer forward and backward times, as ``caffe time``: ONNX Runtime's profiler over the
training step's gradient model (TRAIN: forward, loss, backward) or the forward model (TEST), each
kernel mapped back to its Caffe layer by node name (``layer/...`` forward, ``layer/grad/...``
backward). Inputs are synthetic (normal noise; zeros for label tops), so the net needs no data.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from dnntool.errors import UsageError
from dnntool.net import Net

OTHER = "(other)"  # kernels outside any layer's scope: loss seeds, outputs, BatchNorm averages


@dataclass
class LayerTime:
    """Mean milliseconds per iteration spent in a layer's kernels."""

    name: str
    type: str
    forward_ms: float = 0.0
    backward_ms: float = 0.0


@dataclass
class NodeTime:
    """Mean milliseconds per iteration of one ONNX Runtime kernel (node) of the profiled model."""

    node: str
    op: str
    layer: str
    backward: bool
    ms: float


@dataclass
class TimingResult:
    """``caffe time``'s report: per layer, totals (kernel time) and the wall time per iteration."""

    model: str
    phase: str
    provider: str
    iterations: int
    layers: list[LayerTime] = field(default_factory=list)
    nodes: list[NodeTime] = field(default_factory=list)  # slowest first
    wall_ms: float = 0.0  # mean session.run time per iteration

    @property
    def forward_ms(self) -> float:
        return sum(t.forward_ms for t in self.layers)

    @property
    def backward_ms(self) -> float:
        return sum(t.backward_ms for t in self.layers)

    def to_dict(self, top_nodes: int = 20) -> dict:
        d = asdict(self)
        d["nodes"] = d["nodes"][:top_nodes]
        d["forward_ms"], d["backward_ms"] = self.forward_ms, self.backward_ms
        return d


def layer_of(node: str, layers: Sequence[str]) -> tuple[str, bool]:
    """(layer, is backward) for a node name scoped ``layer/...`` or ``layer/grad/...``; the longest
    layer name wins, since Caffe names may hold slashes (``inception_3a/1x1``)."""
    node = node.removeprefix("fused ")  # ORT's name for a node it fused with its neighbours
    best = ""
    for name in layers:
        if node.startswith(name + "/") and len(name) > len(best):
            best = name
    if not best:
        return OTHER, False
    return best, node[len(best) + 1:].startswith("grad/")


def synthetic_feeds(session, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for every graph input: zeros for label-like tops (1-D or named *label*), noise otherwise."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        if "label" in i.name.lower() or len(shape) == 1:
            feeds[i.name] = np.zeros(shape, np.float32)
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _model(net: Net, phase: str, seed: int):
    """The model to profile and the param inputs it needs (TRAIN: the gradient model)."""
    from dnntool.net.weights import init_weights
    from dnntool.train.snapshot import tensors_from

    values = tensors_from(net, init_weights(net, seed))
    if phase == "train":
        from dnntool.proto import caffe_pb2
        from dnntool.train.step import build_train_graphs

        return build_train_graphs(net, caffe_pb2.SolverParameter(base_lr=0.01)).grad_model, values
    from dnntool.translate.forward import to_onnx

    return to_onnx(net, None, params_as_inputs=True).model, values


def _profile_session(model, device: str, threads: int | None, prefix: str):
    """A session with onnxruntime's profiler on."""
    from dnntool.onnxgraph.runtime import make_session

    return make_session(model, device, threads, profile_prefix=prefix)


def _kernel_times(events: list[dict], skip_runs: int) -> dict[tuple[str, str], float]:
    """Total microseconds per (node, op) over the profiled runs after the first ``skip_runs``."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    cut = runs[skip_runs - 1][1] if skip_runs and len(runs) >= skip_runs else -1
    out: dict[tuple[str, str], float] = {}
    for e in events:
        name = e.get("name", "")
        if e.get("cat") != "Node" or not name.endswith("_kernel_time") or e["ts"] <= cut:
            continue
        key = (name[: -len("_kernel_time")], e.get("args", {}).get("op_name", "?"))
        out[key] = out.get(key, 0.0) + float(e["dur"])
    return out


def time_net(net: Net, iterations: int = 50, device: str = "auto", phase: str = "train",
             threads: int | None = None, seed: int = 0, model_name: str | None = None,
             feeds: Mapping[str, np.ndarray] | None = None) -> TimingResult:
    """One warm-up run, then ``iterations`` profiled runs; times are means per iteration.

    Raises:
        UsageError: iterations < 1. NetError: a TRAIN net without a loss.
    """
    if iterations < 1:
        raise UsageError(f"--iterations must be positive, got {iterations}")
    model, values = _model(net, phase, seed)
    with tempfile.TemporaryDirectory(prefix="dnntool-time-") as tmp:
        sess, provider = _profile_session(model, device, threads, os.path.join(tmp, "profile"))
        inputs = {i.name for i in sess.get_inputs()}
        run_feeds = {k: v for k, v in values.items() if k in inputs}
        run_feeds.update(synthetic_feeds(sess, seed) | dict(feeds or {}))
        run_feeds = {k: v for k, v in run_feeds.items() if k in inputs}
        sess.run(None, run_feeds)
        t0 = time.perf_counter()
        for _ in range(iterations):
            sess.run(None, run_feeds)
        wall = (time.perf_counter() - t0) / iterations * 1e3
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    names = [layer.name for layer in net.layers]
    types = {layer.name: layer.type for layer in net.layers}
    per = {n: LayerTime(n, types[n]) for n in names}
    nodes = []
    for (node, op), us in _kernel_times(events, 1).items():
        layer, back = layer_of(node, names)
        ms = us / iterations / 1e3
        t = per.setdefault(layer, LayerTime(layer, ""))
        if back:
            t.backward_ms += ms
        else:
            t.forward_ms += ms
        nodes.append(NodeTime(node, op, layer, back, ms))
    nodes.sort(key=lambda n: -n.ms)
    layers = [t for t in per.values() if t.forward_ms or t.backward_ms or t.name in types]
    return TimingResult(model_name or net.name, phase, provider, iterations, layers, nodes, wall)
