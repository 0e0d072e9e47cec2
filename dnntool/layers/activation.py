"""Element-wise layers (ReLU, PReLU, ELU, Sigmoid, TanH, AbsVal, BNLL, Power, Exp, Log, Threshold,
Clip, Swish, Dropout) and Softmax.

FLOPs per element are counted as the operations of Caffe's forward: a comparison, multiply, add,
exp, log or division each counts one.
"""

from __future__ import annotations

import math

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


@register_layer("ReLU")
class ReLU(Elementwise):
    """y = max(0, x) + negative_slope * min(0, x)."""

    def forward(self, e: Emit) -> None:
        s = self.lp.relu_param.negative_slope
        if s:
            e.g.op("LeakyRelu", e.bottoms, e.tops, alpha=float(s))
        else:
            e.g.op("Relu", e.bottoms, e.tops)

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
        p = self.lp.prelu_param
        filler = p.filler if p.HasField("filler") else constant_filler(0.25)  # Caffe's default slope
        if p.channel_shared:
            return [ParamBlob((1,), "slope", filler=filler)]
        if len(b) < 2:
            raise self.shape_error(f"needs a bottom with a channel axis, got {list(b)}")
        return [ParamBlob((b[1],), "slope", filler=filler)]

    def forward(self, e: Emit) -> None:
        nd = len(e.bottom_shapes[0])
        slope = e.params[0]
        if not self.lp.prelu_param.channel_shared and nd > 2:  # (C,) broadcast over (N, C, H, W)
            slope = e.g.reshape(slope, [-1] + [1] * (nd - 2))
        e.g.op("PRelu", [e.bottoms[0], slope], e.tops)

    def summary(self) -> str:
        return "shared" if self.lp.prelu_param.channel_shared else ""


@register_layer("ELU")
class ELU(Elementwise):
    """y = x if x > 0 else alpha (exp(x) - 1)."""

    flops_per_element = 3
    onnx_op = "Elu"

    def onnx_attrs(self) -> dict:
        return {"alpha": float(self.lp.elu_param.alpha)}


@register_layer("Sigmoid")
class Sigmoid(Elementwise):
    """y = 1 / (1 + exp(-x))."""

    flops_per_element = 3
    onnx_op = "Sigmoid"


@register_layer("TanH")
class TanH(Elementwise):
    """y = tanh(x)."""

    flops_per_element = 3
    onnx_op = "Tanh"


@register_layer("AbsVal")
class AbsVal(Elementwise):
    """y = |x|."""

    inplace = False  # Caffe's AbsVal cannot run in place (its backward reads the bottom)
    onnx_op = "Abs"


@register_layer("BNLL")
class BNLL(Elementwise):
    """y = x + log(1 + exp(-x)) if x > 0 else log(1 + exp(x))."""

    flops_per_element = 3
    onnx_op = "Softplus"  # log(1 + exp(x)): the same function


@register_layer("Power")
class Power(Elementwise):
    """y = (shift + scale * x) ^ power."""

    flops_per_element = 3

    def summary(self) -> str:
        p = self.lp.power_param
        return f"({p.shift:g} + {p.scale:g}x)^{p.power:g}"

    def forward(self, e: Emit) -> None:
        p = self.lp.power_param
        x = _affine(e, e.bottoms[0], p.scale, p.shift, last=p.power == 1.0)
        if p.power != 1.0:
            e.g.op("Pow", [x, e.g.scalar(p.power)], e.tops)


@register_layer("Exp")
class Exp(Elementwise):
    """y = base ^ (shift + scale * x) (base e by default, -1)."""

    flops_per_element = 3

    def setup(self) -> None:
        b = self.lp.exp_param.base
        if not (b == -1 or b > 0):
            raise self.error(f"exp_param.base must be strictly positive (or -1 for e), got {b:g}")

    def forward(self, e: Emit) -> None:
        p = self.lp.exp_param
        ln_base = 1.0 if p.base == -1 else math.log(p.base)
        x = _affine(e, e.bottoms[0], p.scale * ln_base, p.shift * ln_base)
        e.g.op("Exp", [x], e.tops)


@register_layer("Log")
class Log(Elementwise):
    """y = log_base(shift + scale * x)."""

    flops_per_element = 3

    def setup(self) -> None:
        b = self.lp.log_param.base
        if not (b == -1 or b > 0):
            raise self.error(f"log_param.base must be strictly positive (or -1 for e), got {b:g}")

    def forward(self, e: Emit) -> None:
        p = self.lp.log_param
        x = _affine(e, e.bottoms[0], p.scale, p.shift)
        if p.base == -1:
            e.g.op("Log", [x], e.tops)
        else:
            e.g.op("Div", [e.g.op1("Log", [x]), e.g.scalar(math.log(p.base))], e.tops)


@register_layer("Threshold")
class Threshold(Elementwise):
    """y = 1 if x > threshold else 0."""

    inplace = False

    def forward(self, e: Emit) -> None:
        gt = e.g.op1("Greater", [e.bottoms[0], e.g.scalar(self.lp.threshold_param.threshold)])
        e.g.op("Cast", [gt], e.tops, to=_float_type(e))


@register_layer("Clip")
class Clip(Elementwise):
    """y = min(max(x, min), max)."""

    flops_per_element = 2

    def setup(self) -> None:
        p = self.lp.clip_param
        if p.min > p.max:
            raise self.error(f"clip_param.min {p.min:g} > max {p.max:g}")

    def forward(self, e: Emit) -> None:
        p = self.lp.clip_param
        e.g.op("Clip", [e.bottoms[0], e.g.scalar(p.min), e.g.scalar(p.max)], e.tops)


@register_layer("Swish")
class Swish(Elementwise):
    """y = x * sigmoid(beta * x)."""

    flops_per_element = 5

    def forward(self, e: Emit) -> None:
        beta = self.lp.swish_param.beta
        bx = e.bottoms[0] if beta == 1 else e.g.op1("Mul", [e.bottoms[0], e.g.scalar(beta)])
        e.g.op("Mul", [e.bottoms[0], e.g.op1("Sigmoid", [bx])], e.tops)


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

    def forward(self, e: Emit) -> None:
        if not e.train:
            e.g.op("Identity", e.bottoms, e.tops)
            return
        # Training: keep with probability 1 - ratio, scale kept units by 1/(1 - ratio) (Caffe's
        # Dropout). The mask output feeds the backward (and keeps onnxruntime from dropping the op).
        r = self.lp.dropout_param.dropout_ratio
        e.g.op("Dropout", [e.bottoms[0], e.g.scalar(r), e.g.const(True, dtype="bool")],
               [e.tops[0], e.g.fresh("dropout_mask")])


@register_layer("Softmax")
class Softmax(LayerDef):
    """y = exp(x - max) / sum(exp(x - max)) over ``axis`` (1)."""

    family = "activation"

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        self.canonical_axis(self.lp.softmax_param.axis, len(bottoms[0]))
        return [bottoms[0]]

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        return Cost(0, 4 * count(tops[0]))  # max, subtract+exp, sum, divide

    def forward(self, e: Emit) -> None:
        axis = self.canonical_axis(self.lp.softmax_param.axis, len(e.bottom_shapes[0]))
        e.g.op("Softmax", e.bottoms, e.tops, axis=axis)


def _affine(e: Emit, x: str, scale: float, shift: float, last: bool = False) -> str:
    """shift + scale * x, skipping the identity parts; writes e.tops[0] when ``last``."""
    out = e.tops[0] if last else None
    if scale == 1.0 and shift == 0.0:
        return e.g.op1("Identity", [x], out) if last else x
    y = x
    if scale != 1.0:
        y = e.g.op1("Mul", [y, e.g.scalar(scale)], out if shift == 0.0 else None)
    if shift != 0.0:
        y = e.g.op1("Add", [y, e.g.scalar(shift)], out)
    return y


def _float_type(e: Emit) -> int:
    from dnntool.onnxgraph.builder import onnx_dtype

    return onnx_dtype(e.g.dtype)
