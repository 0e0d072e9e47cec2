"""BatchNorm (Caffe's three stored blobs), Scale, Bias, LRN, MVN and SSD's Normalize."""

from __future__ import annotations

from dnntool.layers.base import Cost, Elementwise, LayerDef, ParamBlob, Shape, count
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


@register_layer("Scale")
class Scale(_Broadcast):
    """y = x * gamma (+ beta); gamma from a blob of shape bottom[axis:axis+num_axes] or a second bottom."""

    def axis_params(self):
        return self.lp.scale_param

    def param_shapes(self, bottoms: list[Shape]) -> list[ParamBlob]:
        two = len(bottoms) == 2
        shape = tuple(bottoms[1]) if two else self.param_shape(bottoms[0])
        blobs = [] if two else [ParamBlob(shape, "scale")]
        if self.lp.scale_param.bias_term:
            blobs.append(ParamBlob(shape, "bias"))
        return blobs

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        n = count(tops[0])
        return Cost(n, n * (2 if self.lp.scale_param.bias_term else 1))

    def summary(self) -> str:
        return "+bias" if self.lp.scale_param.bias_term else ""


@register_layer("Bias")
class Bias(_Broadcast):
    """y = x + beta; beta from a blob of shape bottom[axis:axis+num_axes] or a second bottom."""

    def axis_params(self):
        return self.lp.bias_param

    def param_shapes(self, bottoms: list[Shape]) -> list[ParamBlob]:
        if len(bottoms) == 2:
            return []
        return [ParamBlob(self.param_shape(bottoms[0]), "bias")]

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        return Cost(0, count(tops[0]))


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


@register_layer("Normalize")
class Normalize(LayerDef):
    """SSD's L2 normalisation: x / ||x|| over channels (per position, or over C*H*W), times a learned scale."""

    family = "norm"

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        if len(bottoms[0]) < 2:
            raise self.shape_error(f"expects a bottom with channels, got {list(bottoms[0])}")
        return [bottoms[0]]

    def param_shapes(self, bottoms: list[Shape]) -> list[ParamBlob]:
        if self.lp.norm_param.channel_shared:
            return [ParamBlob((1,), "scale")]
        return [ParamBlob((bottoms[0][1],), "scale")]

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        n = count(tops[0])
        return Cost(2 * n, 4 * n)  # square-accumulate, then divide and scale
