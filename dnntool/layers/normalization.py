"""BatchNorm (Caffe's three stored blobs), Scale, Bias, LRN, MVN and SSD's Normalize."""

from __future__ import annotations

from dnntool.layers.base import (
    Cost,
    Elementwise,
    Emit,
    LayerDef,
    ParamBlob,
    Shape,
    constant_filler,
    count,
)
from dnntool.layers.registry import register_layer
from dnntool.proto import caffe_pb2


def _channels(layer: LayerDef, b: Shape) -> int:
    return b[1] if len(b) > 1 else 1


@register_layer("BatchNorm")
class BatchNorm(Elementwise):
    """y = (x - mean/f) / sqrt(var/f + eps); blobs: sum of means, sum of variances, scale factor f.

    The three blobs are statistics, not learned by the solver: they are reported as stored values.
    No affine transform: a Scale layer follows. Cost: 2 FLOPs per element at test (subtract, multiply
    by a precomputed 1/std), 5 in training (batch mean and variance too).
    """

    family = "norm"

    def param_shapes(self, bottoms: list[Shape]) -> list[ParamBlob]:
        c = _channels(self, bottoms[0])
        return [ParamBlob((c,), "mean", False), ParamBlob((c,), "variance", False),
                ParamBlob((1,), "scale_factor", False)]

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        train = self.phase_is_train() and not self.lp.batch_norm_param.use_global_stats
        return Cost(0, (5 if train else 2) * count(tops[0]))

    def summary(self) -> str:
        p = self.lp.batch_norm_param
        return "global stats" if p.HasField("use_global_stats") and p.use_global_stats else ""

    def use_global_stats(self, train: bool) -> bool:
        """Caffe: stored statistics at test, batch statistics in training, unless set explicitly."""
        p = self.lp.batch_norm_param
        return p.use_global_stats if p.HasField("use_global_stats") else not train

    def forward(self, e: Emit) -> None:
        g, x = e.g, e.bottoms[0]
        eps = float(self.lp.batch_norm_param.eps)
        nd = len(e.bottom_shapes[0])
        if self.use_global_stats(e.train):
            # mean = blob0 / f, var = blob1 / f, with f the scale factor (0 -> statistics are 0)
            f = e.params[2]
            inv = g.op1("Where", [g.op1("Equal", [f, g.scalar(0.0)]), g.scalar(0.0),
                                  g.op1("Reciprocal", [f])])
            mean = g.op1("Mul", [e.params[0], inv])
            var = g.op1("Mul", [e.params[1], inv])
            c = e.bottom_shapes[0][1] if nd > 1 else 1
            import numpy as np

            ones, zeros = g.const(np.ones(c, g.dtype)), g.const(np.zeros(c, g.dtype))
            g.op("BatchNormalization", [x, ones, zeros, mean, var], e.tops[:1], epsilon=eps)
            return
        axes = [0, *range(2, nd)]
        mean = g.op1("ReduceMean", [x], axes=axes, keepdims=1)
        xc = g.op1("Sub", [x, mean])
        var = g.op1("ReduceMean", [g.op1("Mul", [xc, xc])], axes=axes, keepdims=1)
        e.extra["batch_mean"], e.extra["batch_var"] = mean, var  # for the training engine's averages
        g.op("Div", [xc, g.op1("Sqrt", [g.op1("Add", [var, g.scalar(eps)])])], e.tops[:1])


def _axes_shape(layer: LayerDef, b: Shape, axis: int, num_axes: int) -> tuple[int, Shape]:
    """The parameter shape ``b[axis : axis+num_axes]`` (num_axes -1: to the end) used by Scale/Bias."""
    ax = layer.canonical_axis(axis, len(b)) if b else 0
    if num_axes < -1:
        raise layer.error(f"num_axes must be -1 or >= 0, got {num_axes}")
    end = len(b) if num_axes == -1 else ax + num_axes
    if end > len(b):
        raise layer.shape_error(f"axis {axis} + num_axes {num_axes} exceeds the bottom's {len(b)} axes")
    return ax, tuple(b[ax:end])


class _Broadcast(LayerDef):
    """Scale/Bias: a per-slice parameter from a blob or from a second bottom, broadcast over the rest."""

    family = "norm"
    bottoms = (1, 2)
    inplace = True

    def axis_params(self):
        raise NotImplementedError

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        b = bottoms[0]
        if len(bottoms) == 2:
            p = self.axis_params()
            s = bottoms[1]
            ax = self.canonical_axis(p.axis, len(b)) if s else 0
            if tuple(b[ax:ax + len(s)]) != tuple(s):
                raise self.shape_error(
                    f"second bottom {list(s)} does not match bottom {list(b)} from axis {ax}"
                )
        else:
            self.param_shape(b)
        return [b]

    def param_shape(self, b: Shape) -> Shape:
        p = self.axis_params()
        return _axes_shape(self, b, p.axis, p.num_axes)[1]

    def broadcastable(self, e: Emit, t: str, t_shape: Shape) -> str:
        """``t`` (shape bottom[axis:axis+k]) reshaped to broadcast against the bottom."""
        b = e.bottom_shapes[0]
        ax = self.canonical_axis(self.axis_params().axis, len(b)) if t_shape else len(b)
        trailing = len(b) - ax - len(t_shape)
        if trailing <= 0:
            return t
        # A second bottom from axis 0 carries the batch: keep its runtime size when it is dynamic.
        return e.g.reshape(t, [*(e.static_shape(t_shape) if ax == 0 else t_shape), *([1] * trailing)])


@register_layer("Scale")
class Scale(_Broadcast):
    """y = x * gamma (+ beta); gamma from a blob of shape bottom[axis:axis+num_axes] or a second bottom."""

    def axis_params(self):
        return self.lp.scale_param

    def param_shapes(self, bottoms: list[Shape]) -> list[ParamBlob]:
        two = len(bottoms) == 2
        shape = tuple(bottoms[1]) if two else self.param_shape(bottoms[0])
        p = self.lp.scale_param
        filler = p.filler if p.HasField("filler") else constant_filler(1.0)  # Caffe: scale 1 by default
        blobs = [] if two else [ParamBlob(shape, "scale", filler=filler)]
        if p.bias_term:
            blobs.append(ParamBlob(shape, "bias", filler=p.bias_filler))
        return blobs

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        n = count(tops[0])
        return Cost(n, n * (2 if self.lp.scale_param.bias_term else 1))

    def summary(self) -> str:
        return "+bias" if self.lp.scale_param.bias_term else ""

    def forward(self, e: Emit) -> None:
        two = len(e.bottoms) == 2
        shape = tuple(e.bottom_shapes[1]) if two else self.param_shape(e.bottom_shapes[0])
        gamma = self.broadcastable(e, e.bottoms[1] if two else e.params[0], shape)
        if self.lp.scale_param.bias_term:
            y = e.g.op1("Mul", [e.bottoms[0], gamma])
            e.g.op("Add", [y, self.broadcastable(e, e.params[-1], shape)], e.tops)
        else:
            e.g.op("Mul", [e.bottoms[0], gamma], e.tops)


@register_layer("Bias")
class Bias(_Broadcast):
    """y = x + beta; beta from a blob of shape bottom[axis:axis+num_axes] or a second bottom."""

    def axis_params(self):
        return self.lp.bias_param

    def param_shapes(self, bottoms: list[Shape]) -> list[ParamBlob]:
        if len(bottoms) == 2:
            return []
        return [ParamBlob(self.param_shape(bottoms[0]), "bias", filler=self.lp.bias_param.filler)]

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        return Cost(0, count(tops[0]))

    def forward(self, e: Emit) -> None:
        two = len(e.bottoms) == 2
        shape = tuple(e.bottom_shapes[1]) if two else self.param_shape(e.bottom_shapes[0])
        beta = self.broadcastable(e, e.bottoms[1] if two else e.params[0], shape)
        e.g.op("Add", [e.bottoms[0], beta], e.tops)


@register_layer("LRN")
class LRN(LayerDef):
    """ACROSS_CHANNELS: x / (k + alpha/n * sum of x^2 over n channels)^beta; WITHIN_CHANNEL: n x n window.

    MACs: one per element per window tap (n, or n*n within a channel), as netscope counts.
    """

    family = "norm"

    def setup(self) -> None:
        n = self.lp.lrn_param.local_size
        if n % 2 == 0:
            raise self.error(f"local_size must be odd, got {n}")

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        if len(bottoms[0]) != 4:
            raise self.shape_error(f"expects a 4-D bottom (N,C,H,W), got {list(bottoms[0])}")
        return [bottoms[0]]

    def taps(self) -> int:
        p = self.lp.lrn_param
        return p.local_size if p.norm_region == caffe_pb2.LRNParameter.ACROSS_CHANNELS else p.local_size ** 2

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        n = count(tops[0])
        macs = n * self.taps()
        return Cost(macs, 2 * macs + 3 * n)  # + scale, power, divide per element

    def forward(self, e: Emit) -> None:
        p = self.lp.lrn_param
        g, x = e.g, e.bottoms[0]
        if p.norm_region == caffe_pb2.LRNParameter.ACROSS_CHANNELS:
            if not e.train:  # the same formula as ONNX LRN
                g.op("LRN", [x], e.tops, size=int(p.local_size), alpha=float(p.alpha), beta=float(p.beta),
                     bias=float(p.k))
                return
            # Training: standard ops with gradient rules. The mean of x^2 over n channels (zeros
            # beyond the edges) is an average pool over a (N, 1, C, H*W) view.
            n, (_, c, h, w) = int(p.local_size), e.bottom_shapes[0]
            sq = g.reshape(g.op1("Mul", [x, x]), [e.bottom_shapes[0][0], 1, c, h * w])
            pad = (n - 1) // 2
            avg = g.op1("AveragePool", [sq], kernel_shape=[n, 1], pads=[pad, 0, pad, 0], strides=[1, 1],
                        count_include_pad=1)
            scale = g.op1("Add", [g.op1("Mul", [g.reshape(avg, e.bottom_shapes[0]), g.scalar(p.alpha)]),
                                  g.scalar(p.k)])
            g.op("Mul", [x, g.op1("Pow", [scale, g.scalar(-p.beta)])], e.tops)
            return
        # WITHIN_CHANNEL: x / (1 + alpha * mean of x^2 over an n x n window padded by (n-1)/2)^beta
        n, pad = int(p.local_size), (int(p.local_size) - 1) // 2
        avg = g.op1("AveragePool", [g.op1("Mul", [x, x])], kernel_shape=[n, n], pads=[pad] * 4,
                    strides=[1, 1], count_include_pad=1)
        den = g.op1("Pow", [g.op1("Add", [g.op1("Mul", [avg, g.scalar(p.alpha)]), g.scalar(1.0)]),
                            g.scalar(p.beta)])
        g.op("Div", [x, den], e.tops)

    def summary(self) -> str:
        p = self.lp.lrn_param
        region = "across" if p.norm_region == caffe_pb2.LRNParameter.ACROSS_CHANNELS else "within"
        return f"{region} n{p.local_size}"


@register_layer("MVN")
class MVN(LayerDef):
    """Subtracts the mean (and divides by the std) per sample and channel, or across channels."""

    family = "norm"

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        return [bottoms[0]]

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        return Cost(0, (5 if self.lp.mvn_param.normalize_variance else 2) * count(tops[0]))

    def forward(self, e: Emit) -> None:
        p = self.lp.mvn_param
        g, x = e.g, e.bottoms[0]
        axes = list(range(1 if p.across_channels else 2, len(e.bottom_shapes[0])))
        xc = g.op1("Sub", [x, g.op1("ReduceMean", [x], axes=axes, keepdims=1)])
        if not p.normalize_variance:
            g.op("Identity", [xc], e.tops)
            return
        var = g.op1("ReduceMean", [g.op1("Mul", [xc, xc])], axes=axes, keepdims=1)
        std = g.op1("Add", [g.op1("Sqrt", [var]), g.scalar(p.eps)])  # Caffe: / (std + eps)
        g.op("Div", [xc, std], e.tops)


@register_layer("Normalize")
class Normalize(LayerDef):
    """SSD's L2 normalisation: x / ||x|| over channels (per position, or over C*H*W), times a learned scale."""

    family = "norm"

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        if len(bottoms[0]) < 2:
            raise self.shape_error(f"expects a bottom with channels, got {list(bottoms[0])}")
        return [bottoms[0]]

    def param_shapes(self, bottoms: list[Shape]) -> list[ParamBlob]:
        p = self.lp.norm_param
        filler = p.scale_filler if p.HasField("scale_filler") else constant_filler(1.0)
        return [ParamBlob((1,) if p.channel_shared else (bottoms[0][1],), "scale", filler=filler)]

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        n = count(tops[0])
        return Cost(2 * n, 4 * n)  # square-accumulate, then divide and scale

    def forward(self, e: Emit) -> None:
        p = self.lp.norm_param
        g, x = e.g, e.bottoms[0]
        nd = len(e.bottom_shapes[0])
        axes = list(range(1, nd)) if p.across_spatial else [1]
        ss = g.op1("ReduceSum", [g.op1("Mul", [x, x]), g.const([*axes])], keepdims=1)
        norm = g.op1("Sqrt", [g.op1("Add", [ss, g.scalar(p.eps)])])  # SSD: sqrt(sum x^2 + eps)
        y = g.op1("Div", [x, norm])
        scale = e.params[0] if p.channel_shared else g.reshape(e.params[0], [-1, *([1] * (nd - 2))])
        g.op("Mul", [y, scale], e.tops)
