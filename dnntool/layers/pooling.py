"""Pooling (MAX/AVE/STOCHASTIC, global, Caffe's ceil rounding) and SPP."""

from __future__ import annotations

from dnntool.layers.arith import pool_out
from dnntool.layers.base import Cost, Emit, LayerDef, Shape, count
from dnntool.layers.registry import register_layer
from dnntool.proto import caffe_pb2

PP = caffe_pb2.PoolingParameter
_POOL_NAMES = {PP.MAX: "MAX", PP.AVE: "AVE", PP.STOCHASTIC: "STOCHASTIC"}


def _hw(p, field: str, default: int, layer: LayerDef) -> tuple[int, int]:
    fh, fw = f"{field}_h", f"{field}_w"
    if field == "kernel":
        field = "kernel_size"
    has_hw = p.HasField(fh) or p.HasField(fw)
    if has_hw:
        if p.HasField(field):
            raise layer.error(f"give either {field} or {fh}/{fw}, not both")
        if not (p.HasField(fh) and p.HasField(fw)):
            raise layer.error(f"{fh} and {fw} must be given together")
        return getattr(p, fh), getattr(p, fw)
    v = getattr(p, field) if p.HasField(field) else default
    return v, v


@register_layer("Pooling")
class Pooling(LayerDef):
    """Pools H x W windows; out = ceil((H + 2p - k) / s) + 1, clipped so the last window starts in the image."""

    family = "pool"
    tops = (1, 2)  # Caffe: MaxTopBlobs 2 for MAX (the argmax mask), else 1 (checked in infer_shapes)

    def setup(self) -> None:
        p = self.lp.pooling_param
        self.pool = p.pool
        self.global_ = p.global_pooling
        self.pad = _hw(p, "pad", 0, self)
        self.stride = _hw(p, "stride", 1, self)
        if not self.global_:
            has_k = p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w")
            if not has_k:
                raise self.error("kernel_size (or kernel_h/kernel_w) is required unless global_pooling")
            self.kernel = _hw(p, "kernel", 0, self)
            if min(self.kernel) <= 0:
                raise self.error(f"kernel must be > 0, got {self.kernel}")
        elif p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
            raise self.error("with global_pooling the kernel size cannot be specified")
        elif any(self.pad) or self.stride != (1, 1):
            raise self.error("with global_pooling only pad 0 and stride 1 are allowed")
        if min(self.stride) <= 0:
            raise self.error(f"stride must be > 0, got {self.stride}")
        if any(self.pad) and self.pool not in (PP.MAX, PP.AVE):
            raise self.error("padding is implemented only for MAX and AVE pooling")
        self.ceil = self._ceil_mode(p)

    @staticmethod
    def _ceil_mode(p) -> bool:
        """BVLC's ``round_mode`` (CEIL default) or the forks' ``ceil_mode: false``."""
        fields = p.DESCRIPTOR.fields_by_name
        if "ceil_mode" in fields and p.HasField("ceil_mode"):
            return bool(p.ceil_mode)
        if "round_mode" in fields and p.HasField("round_mode"):
            return p.round_mode == PP.CEIL
        return True

    def window(self, bottom: Shape) -> tuple[int, int]:
        return (bottom[2], bottom[3]) if self.global_ else self.kernel

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        b = bottoms[0]
        if len(b) != 4:
            raise self.shape_error(f"expects a 4-D bottom (N,C,H,W), got {list(b)}")
        kh, kw = self.window(b)
        ph, pw = self.pad
        if self.global_:
            out = (1, 1)
        else:
            if ph >= kh or pw >= kw:
                raise self.error(f"pad {self.pad} must be smaller than kernel {self.kernel}")
            if b[2] + 2 * ph < kh or b[3] + 2 * pw < kw:
                raise self.shape_error(f"kernel {kh}x{kw} > padded input {b[2] + 2 * ph}x{b[3] + 2 * pw}")
            clip = bool(ph or pw)  # Caffe: if (pad_h_ || pad_w_) clip both axes
            out = (pool_out(b[2], kh, ph, self.stride[0], self.ceil, clip),
                   pool_out(b[3], kw, pw, self.stride[1], self.ceil, clip))
        top = (b[0], b[1], *out)
        if len(self.lp.top) > 1 and self.pool != PP.MAX:
            raise self.error("only MAX pooling has a second (mask) top")
        return [top, top]

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        kh, kw = self.window(bottoms[0])
        n = count(tops[0])
        return Cost(0, n * kh * kw + (n if self.pool == PP.AVE else 0))

    def forward(self, e: Emit) -> None:
        b = e.bottom_shapes[0]
        if self.global_ and self.pool == PP.MAX and len(e.tops) == 1:
            e.g.op("GlobalMaxPool", e.bottoms, e.tops)
        elif self.global_ and self.pool == PP.AVE:
            e.g.op("GlobalAveragePool", e.bottoms, e.tops)
        else:
            kh, kw = self.window(b)
            emit_pool(e, e.bottoms[0], b, (kh, kw), self.stride, self.pad, self.pool, self.ceil, e.tops)

    def summary(self) -> str:
        name = _POOL_NAMES.get(self.pool, str(self.pool))
        if self.global_:
            return f"{name} global"
        k = f"{self.kernel[0]}x{self.kernel[1]}"
        s = f" s{self.stride[0]}" if self.stride[0] == self.stride[1] else f" s{self.stride[0]}x{self.stride[1]}"
        p = f" p{self.pad[0]}" if any(self.pad) else ""
        return f"{name} {k}{s}{p}" + ("" if self.ceil else " floor")


@register_layer("SPP")
class SPP(LayerDef):
    """Spatial pyramid pooling: levels l < pyramid_height pool into 2^l x 2^l bins, flattened and concatenated."""

    family = "pool"

    def setup(self) -> None:
        self.height = self.lp.spp_param.pyramid_height
        if self.height < 1:
            raise self.error("spp_param.pyramid_height must be >= 1")

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        b = bottoms[0]
        if len(b) != 4:
            raise self.shape_error(f"expects a 4-D bottom (N,C,H,W), got {list(b)}")
        if self.height == 1:
            return [(b[0], b[1], 1, 1)]
        bins = sum(4**level for level in range(self.height))
        return [(b[0], b[1] * bins)]

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        return Cost(0, count(bottoms[0]) * self.height)

    def forward(self, e: Emit) -> None:
        b = e.bottom_shapes[0]
        pool = self.lp.spp_param.pool
        parts = []
        for level in range(self.height):
            bins = 2**level
            k = (-(-b[2] // bins), -(-b[3] // bins))  # Caffe's SPP: ceil(H / bins) windows,
            pad = ((k[0] * bins - b[2] + 1) // 2, (k[1] * bins - b[3] + 1) // 2)  # centred by padding
            y = emit_pool(e, e.bottoms[0], b, k, k, pad, pool, True, None)[0]
            parts.append(e.g.op1("Flatten", [y], axis=1) if self.height > 1 else y)
        if self.height == 1:
            e.g.op("Identity", parts, e.tops)
        else:
            e.g.op("Concat", parts, e.tops, axis=1)

    def summary(self) -> str:
        return f"{self.height} levels"


def emit_pool(e: Emit, x: str, b: Shape, kernel, stride, pad, pool: int, ceil: bool,
              tops: list[str] | None) -> list[str]:
    """Caffe pooling in ONNX: explicit end padding reproduces the ceil-and-clip output size; AVE
    divides by Caffe's window size (padding counts, the ceil overhang does not) via a constant map.

    With stride > kernel and no pad, Caffe's ceil can add windows that start past the image: they
    pool nothing (MAX -FLT_MAX and mask -1, AVE 0/size, i.e. NaN when size is 0, STOCHASTIC 0).
    ONNX pads must stay below the kernel, so only the windows starting inside are pooled and the
    rest are padded with those constants.
    """
    import numpy as np

    g = e.g
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    clip = bool(ph or pw)
    oh = pool_out(b[2], kh, ph, sh, ceil, clip)
    ow = pool_out(b[3], kw, pw, sw, ceil, clip)
    ih = min(oh, -(-(b[2] + ph) // sh))  # windows whose start i*s - p lies before H + p
    iw = min(ow, -(-(b[3] + pw) // sw))
    eh = max(0, (ih - 1) * sh + kh - b[2] - ph)
    ew = max(0, (iw - 1) * sw + kw - b[3] - pw)
    attrs = {"kernel_shape": [kh, kw], "strides": [sh, sw], "pads": [ph, pw, eh, ew]}
    tail = (oh - ih, ow - iw)
    out0 = tops[0] if tops else None

    def finish(y: str, value: float, name: str | None) -> str:
        if not any(tail):
            return y if name is None or y == name else g.op1("Identity", [y], name)
        pads = g.const(np.asarray([0, 0, 0, 0, 0, 0, tail[0], tail[1]], np.int64))
        return g.op1("Pad", [y, pads, g.scalar(value)], name, mode="constant")

    direct = None if any(tail) else out0  # the pooling op writes the top itself when nothing is padded
    if pool == PP.MAX:
        mask = tops is not None and len(tops) > 1
        if mask:  # the argmax feeds Caffe's mask top
            y, idx = g.op("MaxPool", [x], [direct or g.fresh("maxpool_out"), g.fresh("argmax")], **attrs)
        else:
            y = g.op1("MaxPool", [x], direct, **attrs)
        res = [finish(y, float(np.finfo(np.float32).min), out0)]  # Caffe starts at -FLT_MAX
        if mask:  # Caffe's mask: index h*W + w within the channel plane, -1 for an empty window
            plane = g.op1("Mod", [idx, g.const(np.asarray(b[2] * b[3], np.int64))])
            res.append(finish(g.op1("Cast", [plane], None if any(tail) else tops[1], to=1), -1.0, tops[1]))
        return res
    hs = np.arange(oh) * sh - ph
    ws = np.arange(ow) * sw - pw
    size_h = np.minimum(hs + kh, b[2] + ph) - hs
    size_w = np.minimum(ws + kw, b[3] + pw) - ws
    if pool == PP.AVE:
        avg = finish(g.op1("AveragePool", [x], count_include_pad=1, **attrs), 0.0, None)  # sum / (kh*kw)
        size = np.outer(size_h, size_w).astype(np.float64)
        inside = np.zeros((oh, ow), bool)
        inside[:ih, :iw] = True
        with np.errstate(divide="ignore"):
            factor = np.where(inside, (kh * kw) / np.where(inside, size, 1), np.where(size == 0, np.nan, 1.0))
        return [g.op1("Mul", [avg, g.const(factor[None, None].astype(g.dtype))], out0)]
    # STOCHASTIC at test time: the probability-weighted average sum(x^2) / sum(x) over the window,
    # 0 where sum(x) <= 0 (Caffe's StoPoolForwardTest)
    sq = g.op1("AveragePool", [g.op1("Mul", [x, x])], count_include_pad=1, **attrs)
    s = g.op1("AveragePool", [x], count_include_pad=1, **attrs)
    ratio = g.op1("Where", [g.op1("Greater", [s, g.scalar(0.0)]), g.op1("Div", [sq, s]), g.scalar(0.0)],
                  direct)
    return [finish(ratio, 0.0, out0)]
