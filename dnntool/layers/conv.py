"""Convolution, Deconvolution and depthwise convolution (N-D, grouped, dilated)."""

from __future__ import annotations

import math
from typing import ClassVar

from dnntool.layers.arith import conv_out, deconv_out
from dnntool.layers.base import Cost, Emit, LayerDef, ParamBlob, Shape, count
from dnntool.layers.registry import register_layer


def _per_axis(values, h, w, has_hw: bool, n: int, default: int, what: str, layer: LayerDef) -> list[int]:
    """Caffe's rule for kernel/pad/stride/dilation: ``x_h``/``x_w`` (2-D only), one value, or one per axis."""
    if has_hw:
        if n != 2:
            raise layer.error(f"{what}_h/{what}_w can only be used for 2-D convolution")
        if values:
            raise layer.error(f"give either {what} or {what}_h/{what}_w, not both")
        return [h, w]
    vals = list(values)
    if not vals:
        return [default] * n
    if len(vals) == 1:
        return vals * n
    if len(vals) != n:
        raise layer.error(f"{what} must be given once or {n} times (once per spatial axis), got {len(vals)}")
    return vals


@register_layer("Convolution")
class Convolution(LayerDef):
    """y = W * x + b over the spatial axes after ``axis``; weights (C_out, C_in/group, k...)."""

    family = "conv"
    bottoms = (1, None)  # Caffe: MinBottomBlobs 1, EqualNumBottomTopBlobs (same filters for each bottom)
    tops = (1, None)
    transposed: ClassVar[bool] = False
    depthwise: ClassVar[bool] = False

    def setup(self) -> None:
        p = self.lp.convolution_param
        if not p.HasField("num_output") or p.num_output == 0:
            raise self.error("convolution_param.num_output must be set and > 0")
        self.num_output = p.num_output
        self.group = p.group or 1
        self.bias = p.bias_term
        if self.num_output % self.group:
            raise self.error(f"num_output {self.num_output} is not divisible by group {self.group}")

    def spatial(self, bottom: Shape) -> tuple[int, list[int], list[int], list[int], list[int]]:
        p = self.lp.convolution_param
        axis = self.canonical_axis(p.axis, len(bottom))
        n = len(bottom) - axis - 1
        if n < 1:
            raise self.shape_error(f"bottom {list(bottom)} has no spatial axes after axis {axis}")
        k = _per_axis(p.kernel_size, p.kernel_h, p.kernel_w, p.HasField("kernel_h") or p.HasField("kernel_w"),
                      n, 0, "kernel", self)
        if p.HasField("kernel_h") != p.HasField("kernel_w"):
            raise self.error("kernel_h and kernel_w must be given together")
        if not k or any(v <= 0 for v in k):
            raise self.error("kernel_size (or kernel_h/kernel_w) must be set and > 0")
        pad = _per_axis(p.pad, p.pad_h, p.pad_w, p.HasField("pad_h") or p.HasField("pad_w"), n, 0, "pad", self)
        stride = _per_axis(p.stride, p.stride_h, p.stride_w, p.HasField("stride_h") or p.HasField("stride_w"),
                           n, 1, "stride", self)
        if any(s <= 0 for s in stride):
            raise self.error(f"stride must be > 0, got {stride}")
        dil = _per_axis(p.dilation, 0, 0, False, n, 1, "dilation", self)
        return axis, k, pad, stride, dil

    def channels(self, bottom: Shape, axis: int) -> tuple[int, int]:
        """(input channels, group) with Caffe's divisibility checks."""
        c = bottom[axis]
        group = c if self.depthwise else self.group
        if c % group:
            raise self.shape_error(f"input channels {c} are not divisible by group {group}")
        if self.num_output % group:
            raise self.shape_error(f"num_output {self.num_output} is not divisible by group {group}")
        return c, group

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        b0 = bottoms[0]
        if len(self.lp.top) != len(bottoms):
            raise self.error(f"needs one top per bottom, got {len(bottoms)} bottoms and {len(self.lp.top)} tops")
        for b in bottoms[1:]:
            if b != b0:
                raise self.shape_error(f"all bottoms must have the same shape, got {list(b0)} and {list(b)}")
        axis, k, pad, stride, dil = self.spatial(b0)
        self.channels(b0, axis)
        fn = deconv_out if self.transposed else conv_out
        out = [fn(b0[axis + 1 + i], k[i], pad[i], stride[i], dil[i]) for i in range(len(k))]
        if any(o <= 0 for o in out):
            raise self.shape_error(
                f"kernel {'x'.join(map(str, k))} (dilation {dil}, pad {pad}, stride {stride}) gives an empty"
                f" output for input {'x'.join(map(str, b0[axis + 1:]))}"
            )
        top = (*b0[:axis], self.num_output, *out)
        return [top] * len(bottoms)

    def param_shapes(self, bottoms: list[Shape]) -> list[ParamBlob]:
        axis, k, *_ = self.spatial(bottoms[0])
        c, group = self.channels(bottoms[0], axis)
        if self.transposed:
            w = (c, self.num_output // group, *k)  # Caffe's deconvolution weight layout
        else:
            w = (self.num_output, c // group, *k)
        p = self.lp.convolution_param
        blobs = [ParamBlob(w, "weights", filler=p.weight_filler)]
        if self.bias:
            blobs.append(ParamBlob((self.num_output,), "bias", filler=p.bias_filler))
        return blobs

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        axis, k, *_ = self.spatial(bottoms[0])
        c, group = self.channels(bottoms[0], axis)
        ksize = math.prod(k)
        macs = 0
        for b, t in zip(bottoms, tops, strict=True):
            if self.transposed:  # every input value is scattered through a (C_out/group) x k kernel
                macs += count(b) * (self.num_output // group) * ksize
            else:  # every output value gathers (C_in/group) x k inputs
                macs += count(t) * (c // group) * ksize
        bias = sum(count(t) for t in tops) if self.bias else 0
        return Cost(macs, 2 * macs + bias)

    def forward(self, e: Emit) -> None:
        axis, k, pad, stride, dil = self.spatial(e.bottom_shapes[0])
        if axis != 1:
            raise self.error(f"axis {axis}: ONNX convolutions need channels on axis 1")
        _, group = self.channels(e.bottom_shapes[0], axis)
        op = "ConvTranspose" if self.transposed else "Conv"  # ONNX ConvTranspose weights are Caffe's layout
        for x, y in zip(e.bottoms, e.tops, strict=True):
            e.g.op(op, [x, *e.params], [y], kernel_shape=k, pads=pad + pad, strides=stride,
                   dilations=dil, group=group)

    def summary(self) -> str:
        p = self.lp.convolution_param
        try:
            _, k, pad, stride, dil = self.spatial((1, 1) + (8,) * max(2, len(p.kernel_size)))
        except Exception:
            return str(self.num_output)
        parts = ["x".join(map(str, k))]
        if any(s != 1 for s in stride):
            parts.append("s" + "x".join(map(str, sorted(set(stride)))))
        if any(v for v in pad):
            parts.append("p" + "x".join(map(str, sorted(set(pad)))))
        if any(d != 1 for d in dil):
            parts.append("d" + "x".join(map(str, sorted(set(dil)))))
        g = "dw" if self.depthwise else (f"g{self.group}" if self.group > 1 else "")
        return " ".join(parts) + f", {self.num_output}" + (f" {g}" if g else "")


@register_layer("Deconvolution")
class Deconvolution(Convolution):
    """Transposed convolution; weights (C_in, C_out/group, k...); out = s(H-1) + d(k-1) + 1 - 2p."""

    transposed = True


@register_layer("ConvolutionDepthwise", "DepthwiseConvolution")
class DepthwiseConvolution(Convolution):
    """Depthwise convolution (MobileNet/ShuffleNet forks): group = input channels; weights (C_out, 1, k...)."""

    depthwise = True
