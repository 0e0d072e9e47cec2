"""The layer contract: one LayerDef subclass per Caffe layer type, plus family base classes.

A LayerDef is instantiated once per layer of a net with its LayerParameter. It reads and checks its
``*_param`` in :meth:`setup`, infers top shapes from bottom shapes, lists its parameter blobs in
Caffe's order and counts its cost. Shapes are tuples of ints, as Caffe's ``Blob::shape()``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from dnntool.errors import NetError, ShapeError, SourceLoc
from dnntool.proto import caffe_pb2

if TYPE_CHECKING:
    from dnntool.onnxgraph.builder import GraphBuilder

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ParamBlob:
    """One parameter blob of a layer: its shape, role name and whether the solver learns it.

    ``learnable=False`` marks stored blobs that are not trained by the solver (BatchNorm's running
    mean, variance and scale factor): they are reported apart from learnable parameters.
    """

    shape: Shape
    role: str = "weights"
    learnable: bool = True
    #: how init-weights/train fill it (Caffe's FillerParameter); None means constant 0
    filler: caffe_pb2.FillerParameter | None = field(default=None, compare=False, hash=False)

    @property
    def count(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Cost:
    """Cost of one forward pass of a layer for the whole batch.

    ``macs``: multiply-accumulates (netscope's convention: Convolution, Deconvolution, InnerProduct,
    Scale, LRN, Eltwise PROD...). ``flops``: floating-point operations, 2 per MAC plus one per
    element of element-wise work (additions, comparisons, exp...). See docs in ``dnntool flops --help``.
    """

    macs: int = 0
    flops: int = 0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.macs + other.macs, self.flops + other.flops)


@dataclass
class BuildContext:
    """What a layer may need beyond its own parameters while a net is built."""

    phase: int = caffe_pb2.TEST
    input_shapes: Mapping[str, Shape] = field(default_factory=dict)
    net_path: str | None = None  # the prototxt, to resolve relative data sources
    used_input_shapes: set[str] = field(default_factory=set)

    def input_shape(self, top: str) -> Shape | None:
        """A user-given shape for a data layer's top (``--input-shape top=...``), if any."""
        if top in self.input_shapes:
            self.used_input_shapes.add(top)
            return tuple(self.input_shapes[top])
        if "" in self.input_shapes and "" not in self.used_input_shapes:
            self.used_input_shapes.add("")  # a bare N,C,H,W: the first input asked for
            return tuple(self.input_shapes[""])
        return None


@dataclass
class Emit:
    """What a layer's ``forward`` gets: the builder and the tensor names/shapes of its blobs.

    ``bottoms``/``params`` are existing tensor names; the layer must produce every name in ``tops``
    (same order). ``batch`` is the symbolic batch dimension name when the batch is dynamic.
    """

    g: GraphBuilder
    bottoms: list[str]
    tops: list[str]
    params: list[str]
    bottom_shapes: list[Shape]
    top_shapes: list[Shape]
    train: bool = False
    batch: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def static_shape(self, shape: Sequence[int]) -> list[int]:
        """A Reshape target for ``shape``: 0 (copy) on the batch axis when the batch is dynamic."""
        s = [int(d) for d in shape]
        if self.batch is not None and s:
            s[0] = 0
        return s


@dataclass
class BackEmit:
    """What a layer's ``backward`` override gets: forward tensor names, the gradients of its tops
    (None where no gradient arrives) and which of ``bottoms + params`` need a gradient."""

    g: GraphBuilder
    bottoms: list[str]
    tops: list[str]
    params: list[str]
    bottom_shapes: list[Shape]
    top_shapes: list[Shape]
    top_grads: list[str | None]
    need: list[bool]
    extra: dict[str, Any] = field(default_factory=dict)


def constant_filler(value: float) -> caffe_pb2.FillerParameter:
    """A ``constant`` FillerParameter (the defaults Caffe layers use when none is given)."""
    return caffe_pb2.FillerParameter(type="constant", value=value)


def format_shape(shape: Sequence[int]) -> str:
    """``1x3x224x224`` (``scalar`` for a 0-D blob)."""
    return "x".join(str(int(d)) for d in shape) if len(shape) else "scalar"


def count(shape: Sequence[int]) -> int:
    """Number of elements of a shape."""
    return math.prod(shape)


def count_range(shape: Sequence[int], start: int, end: int | None = None) -> int:
    """Product of ``shape[start:end]`` (Caffe's ``Blob::count(start, end)``)."""
    return math.prod(shape[start:end])


class LayerDef:
    """Base of every layer type. Subclasses set the class attributes and override the methods."""

    type: ClassVar[str] = ""
    #: netscope colour family: data, conv, pool, activation, norm, ip, merge, reshape, loss, detection, other
    family: ClassVar[str] = "other"
    #: (min, max) number of bottoms and tops; max None means unbounded.
    bottoms: ClassVar[tuple[int, int | None]] = (1, 1)
    tops: ClassVar[tuple[int, int | None]] = (1, 1)
    #: loss layers get loss_weight 1 on their first top by default (Caffe's SetLossWeights).
    is_loss: ClassVar[bool] = False
    #: data layers produce the net's inputs (no bottoms; their tops become graph inputs).
    is_data: ClassVar[bool] = False
    #: layers that may run in place (top == bottom), which netscope folds into their producer.
    inplace: ClassVar[bool] = False

    def __init__(self, lp: caffe_pb2.LayerParameter, ctx: BuildContext, loc: SourceLoc | None = None):
        self.lp = lp
        self.name = lp.name
        self.ctx = ctx
        self.loc = loc
        self.setup()

    # -- the contract ------------------------------------------------------------------------
    def setup(self) -> None:
        """Read and validate ``self.lp``'s parameters (raise ``self.error``)."""

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        """Top shapes from bottom shapes."""
        raise NotImplementedError(f"{type(self).__name__}.infer_shapes")

    def param_shapes(self, bottoms: list[Shape]) -> list[ParamBlob]:
        """Parameter blobs in Caffe's order (e.g. weights then bias)."""
        return []

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        """MACs and FLOPs of one forward pass over the batch."""
        return Cost()

    def summary(self) -> str:
        """Key parameters in a few characters, e.g. ``3x3 s2 p1, 256`` (netscope node label)."""
        return ""

    #: False for layers with no inference meaning in ONNX (e.g. NMS post-processing, Python code).
    translatable: ClassVar[bool] = True

    def forward(self, e: Emit) -> None:
        """Emit ONNX nodes computing ``e.tops`` from ``e.bottoms`` and ``e.params`` (Caffe semantics)."""
        raise self.error("has no ONNX translation")

    def backward(self, b: BackEmit) -> list[str | None] | None:
        """A fused backward: gradients for ``bottoms + params`` (None where none flows).

        Return None (the default) to derive the backward from the forward's ONNX nodes, one rule
        per op. Override only where that would be wrong or wasteful, and say why.
        """
        return None

    # -- helpers -----------------------------------------------------------------------------
    def error(self, message: str, cls: type[NetError] = NetError) -> NetError:
        """An error naming this layer, its type and where it was defined."""
        return cls(f"layer '{self.name}' ({self.lp.type}): {message}", self.loc, layer=self.name)

    def shape_error(self, message: str) -> ShapeError:
        return self.error(message, ShapeError)  # type: ignore[return-value]

    def canonical_axis(self, axis: int, ndim: int, what: str = "axis") -> int:
        """Caffe's ``CanonicalAxisIndex``: negative axes count from the end."""
        if not -ndim <= axis < ndim:
            raise self.shape_error(f"{what} {axis} is out of range for a {ndim}-D bottom")
        return axis + ndim if axis < 0 else axis

    def phase_is_train(self) -> bool:
        return self.ctx.phase == caffe_pb2.TRAIN


class Elementwise(LayerDef):
    """One bottom, one top of the same shape; ``flops_per_element`` operations per value.

    A subclass whose forward is a single ONNX op sets ``onnx_op`` (and ``onnx_attrs()``).
    """

    family = "activation"
    inplace = True
    flops_per_element: ClassVar[int] = 1
    onnx_op: ClassVar[str] = ""

    def onnx_attrs(self) -> dict[str, Any]:
        return {}

    def forward(self, e: Emit) -> None:
        if not self.onnx_op:
            raise self.error("has no ONNX translation")
        e.g.op(self.onnx_op, e.bottoms[:1], e.tops[:1], **self.onnx_attrs())

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        return [bottoms[0]]

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        return Cost(0, self.flops_per_element * count(tops[0]))


class LossLayer(LayerDef):
    """A loss: two or more bottoms (prediction, label...), a scalar top weighted 1 by default."""

    family = "loss"
    is_loss = True
    bottoms = (2, 2)
    tops = (1, 1)

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        return [()]


class DataLayer(LayerDef):
    """A layer that produces the net's inputs; ``--input-shape`` overrides what it would read."""

    family = "data"
    is_data = True
    bottoms = (0, 0)
    tops = (1, None)
