"""Element-wise layers (ReLU, PReLU, ELU, Sigmoid, TanH, AbsVal, BNLL, Power, Exp, Log, Threshold,
Clip, Swish, Dropout) and Softmax.

FLOPs per element are counted as the operations of Caffe's forward: a comparison, multiply, add,
exp, log or division each counts one.
"""

from __future__ import annotations

from dnntool.layers.base import Cost, Elementwise, LayerDef, ParamBlob, Shape, count
from dnntool.layers.registry import register_layer


@register_layer("ReLU")
class ReLU(Elementwise):
    """y = max(0, x) + negative_slope * min(0, x)."""

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        return Cost(0, (2 if self.lp.relu_param.negative_slope else 1) * count(tops[0]))

    def summary(self) -> str:
        s = self.lp.relu_param.negative_slope
        return f"slope {s:g}" if s else ""


@register_layer("PReLU")
class PReLU(Elementwise):
    """y = max(0, x) + a_c * min(0, x), a learned per channel (or one shared a)."""

    flops_per_element = 2

    def param_shapes(self, bottoms: list[Shape]) -> list[ParamBlob]:
        b = bottoms[0]
        if self.lp.prelu_param.channel_shared:
            return [ParamBlob((1,), "slope")]
        if len(b) < 2:
            raise self.shape_error(f"needs a bottom with a channel axis, got {list(b)}")
        return [ParamBlob((b[1],), "slope")]

    def summary(self) -> str:
        return "shared" if self.lp.prelu_param.channel_shared else ""


@register_layer("ELU")
class ELU(Elementwise):
    """y = x if x > 0 else alpha (exp(x) - 1)."""

    flops_per_element = 3


@register_layer("Sigmoid")
class Sigmoid(Elementwise):
    """y = 1 / (1 + exp(-x))."""

    flops_per_element = 3


@register_layer("TanH")
class TanH(Elementwise):
    """y = tanh(x)."""

    flops_per_element = 3


@register_layer("AbsVal")
class AbsVal(Elementwise):
    """y = |x|."""

    inplace = False  # Caffe's AbsVal cannot run in place (its backward reads the bottom)


@register_layer("BNLL")
class BNLL(Elementwise):
    """y = x + log(1 + exp(-x)) if x > 0 else log(1 + exp(x))."""

    flops_per_element = 3


@register_layer("Power")
class Power(Elementwise):
    """y = (shift + scale * x) ^ power."""

    flops_per_element = 3

    def summary(self) -> str:
        p = self.lp.power_param
        return f"({p.shift:g} + {p.scale:g}x)^{p.power:g}"


@register_layer("Exp")
class Exp(Elementwise):
    """y = base ^ (shift + scale * x) (base e by default, -1)."""

    flops_per_element = 3

    def setup(self) -> None:
        b = self.lp.exp_param.base
        if not (b == -1 or b > 0):
            raise self.error(f"exp_param.base must be strictly positive (or -1 for e), got {b:g}")


@register_layer("Log")
class Log(Elementwise):
    """y = log_base(shift + scale * x)."""

    flops_per_element = 3

    def setup(self) -> None:
        b = self.lp.log_param.base
        if not (b == -1 or b > 0):
            raise self.error(f"log_param.base must be strictly positive (or -1 for e), got {b:g}")


@register_layer("Threshold")
class Threshold(Elementwise):
    """y = 1 if x > threshold else 0."""

    inplace = False


@register_layer("Clip")
class Clip(Elementwise):
    """y = min(max(x, min), max)."""

    flops_per_element = 2

    def setup(self) -> None:
        p = self.lp.clip_param
        if p.min > p.max:
            raise self.error(f"clip_param.min {p.min:g} > max {p.max:g}")


@register_layer("Swish")
class Swish(Elementwise):
    """y = x * sigmoid(beta * x)."""

    flops_per_element = 5


@register_layer("Dropout")
class Dropout(Elementwise):
    """Identity at test; in training keeps a unit with probability 1 - ratio and scales it by 1/(1-ratio)."""

    family = "activation"

    def setup(self) -> None:
        r = self.lp.dropout_param.dropout_ratio
        if not 0.0 <= r < 1.0:
            raise self.error(f"dropout_ratio must be in [0, 1), got {r:g}")

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        return Cost(0, 2 * count(tops[0]) if self.phase_is_train() else 0)

    def summary(self) -> str:
        return f"{self.lp.dropout_param.dropout_ratio:g}"


@register_layer("Softmax")
class Softmax(LayerDef):
    """y = exp(x - max) / sum(exp(x - max)) over ``axis`` (1)."""

    family = "activation"

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        self.canonical_axis(self.lp.softmax_param.axis, len(bottoms[0]))
        return [bottoms[0]]

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        return Cost(0, 4 * count(tops[0]))  # max, subtract+exp, sum, divide
