"""Per-layer cost reports: learnable parameters, stored blobs, MACs, FLOPs, activations.

Conventions (also in ``dnntool flops --help`` and the README):

* Params are the values of learnable blobs (weights, biases, Scale/PReLU/Normalize factors). A blob
  shared by several layers (``param { name: ... }``) counts once, at its first owner. BatchNorm's mean,
  variance and scale factor are *stored* values, reported apart.
* MACs are multiply-accumulates for the whole batch: Convolution (C_in/group x k x k per output value),
  Deconvolution (C_out/group x k x k per *input* value), InnerProduct (K per output), Scale (1 per
  element), LRN (window taps per element), Eltwise PROD, Normalize. Bias additions are not MACs.
* FLOPs are 2 per MAC, plus a bias add per output, plus element-wise work at one operation per
  comparison/add/multiply/exp/division (ReLU 1, BatchNorm 2 at test, pooling k*k per output, Softmax 4...).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from dnntool.errors import UsageError
from dnntool.net import Net
from dnntool.net.net import Layer, format_shape
from dnntool.net.weights import check_weights

if TYPE_CHECKING:  # numpy (via the caffemodel reader) is only needed with --weights
    from dnntool.io.caffemodel import Weights

_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_count(text: str) -> int:
    """``5M`` -> 5000000; accepts K/M/G/T suffixes (decimal), underscores and commas."""
    m = re.fullmatch(r"\s*([0-9][0-9_,]*(?:\.[0-9]+)?)\s*([kKmMgGtT]?)\s*", text)
    if not m:
        raise UsageError(f"invalid count '{text}' (expected e.g. 5M, 2.5G, 1000000)")
    return round(float(m.group(1).replace("_", "").replace(",", "")) * _SUFFIX[m.group(2).upper()])


def human(n: float) -> str:
    """12345678 -> 12.35M."""
    for unit, f in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= f:
            return f"{n / f:.2f}{unit}"
    return f"{n:g}" if isinstance(n, float) else str(n)


@dataclass
class Row:
    """One layer of a report."""

    name: str
    type: str
    tops: list[str]
    shapes: list[list[int]]
    params: int
    stored: int
    macs: int
    flops: int
    activations: int
    blobs: list[list[int]] = field(default_factory=list)


@dataclass
class Report:
    """A whole-net report; totals are for the batch the net declares (``batch``)."""

    net: str
    source: str | None
    phase: str
    batch: int
    rows: list[Row]
    weights: str | None = None
    unused_weights: list[str] = field(default_factory=list)

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def stored(self) -> int:
        return sum(r.stored for r in self.rows)

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.rows)

    @property
    def flops(self) -> int:
        return sum(r.flops for r in self.rows)

    @property
    def activations(self) -> int:
        return sum(r.activations for r in self.rows)

    def totals(self) -> dict[str, int]:
        t = {"params": self.params, "stored": self.stored, "macs": self.macs, "flops": self.flops,
             "activations": self.activations}
        if self.batch > 1:
            t.update({f"{k}_per_image": v // self.batch for k, v in t.items() if k in ("macs", "flops", "activations")})
        return t

    def to_dict(self) -> dict:
        return {"net": self.net, "source": self.source, "phase": self.phase, "batch": self.batch,
                "weights": self.weights, "unused_weights": self.unused_weights,
                "layers": [asdict(r) for r in self.rows], "totals": self.totals()}


def _batch(net: Net) -> int:
    """The batch size the net's inputs declare (first axis of the first input), 1 if none."""
    for layer in net.layers:
        if layer.impl.is_data and layer.top_shapes and layer.top_shapes[0]:
            return int(layer.top_shapes[0][0]) or 1
    return 1


def _row(layer: Layer, file_shapes: dict[str, list[tuple[int, ...]]] | None) -> Row:
    shapes = file_shapes.get(layer.name) if file_shapes is not None else None
    params = stored = 0
    for k, p in enumerate(layer.params):
        if p.shared_from is not None:
            continue
        n = math.prod(shapes[k]) if shapes is not None else p.count
        if p.blob.learnable:
            params += n
        else:
            stored += n
    return Row(
        name=layer.name, type=layer.type, tops=list(layer.top_names),
        shapes=[list(s) for s in layer.top_shapes], params=params, stored=stored,
        macs=layer.cost.macs, flops=layer.cost.flops,
        activations=0 if layer.in_place else sum(math.prod(s) for s in layer.top_shapes),
        blobs=[list(p.shape) for p in layer.params],
    )


def report(net: Net, weights: Weights | None = None) -> Report:
    """Build the per-layer report of a net (counts from ``weights`` when given, after checking them)."""
    file_shapes = check_weights(net, weights) if weights is not None else None
    return Report(
        net=net.name, source=net.source, phase="train" if net.phase == 0 else "test", batch=_batch(net),
        rows=[_row(layer, file_shapes) for layer in net.layers],
        weights=weights.path if weights is not None else None,
        unused_weights=[n for n in (weights.blobs if weights is not None else {})
                        if n not in {layer.name for layer in net.layers}],
    )


def param_count(net: Net, weights: Weights | None = None) -> Report:
    """Per-layer learnable and stored parameter counts (see module docs for conventions)."""
    return report(net, weights)


def flops(net: Net) -> Report:
    """Per-layer MACs, FLOPs and activations (see module docs for conventions)."""
    return report(net)


def fmt_shapes(row: Row) -> str:
    return ", ".join(format_shape(s) for s in row.shapes)
