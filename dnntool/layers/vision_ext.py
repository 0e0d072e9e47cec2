"""Spatial layers from popular forks: ShuffleChannel (ShuffleNet), Interp (PSPNet/DeepLab), Upsample
(SegNet's max-unpooling, and the single-bottom nearest-neighbour form of the YOLO ports).

Cost conventions: a bilinear output value is 4 MACs (one weighted tap per neighbour, FLOPs = 2 x MACs);
pure data movement (channel shuffle, unpooling scatter, nearest-neighbour repeat) costs nothing.
"""

from __future__ import annotations

from dnntool.layers.base import Cost, Emit, LayerDef, Shape, count, format_shape
from dnntool.layers.registry import register_layer


def _full_shape(e: Emit, x: str, tail: list[int]) -> str:
    """An int64 shape tensor (N, C, *tail): constant, or N and C read from ``x`` when the batch is dynamic."""
    import numpy as np

    b = e.bottom_shapes[0]
    if e.batch is None:
        return e.g.const(np.asarray([b[0], b[1], *tail], np.int64))
    nc = e.g.op1("Slice", [e.g.op1("Shape", [x]), e.g.const([0]), e.g.const([2])])
    return e.g.op1("Concat", [nc, e.g.const(np.asarray(tail, np.int64))], axis=0)


@register_layer("ShuffleChannel")
class ShuffleChannel(LayerDef):
    """ShuffleNet channel shuffle: view C as (group, C/group), transpose to (C/group, group); top = bottom shape."""

    family = "reshape"
    # farmingyard/ShuffleNet shuffle_channel_layer.cpp: CHECK_EQ(channels, group_row * group_column).

    def setup(self) -> None:
        self.group = self.lp.shuffle_channel_param.group
        if self.group < 1:
            raise self.error(f"shuffle_channel_param.group must be >= 1, got {self.group}")

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        b = bottoms[0]
        if len(b) < 2:
            raise self.shape_error(f"expects a bottom with a channel axis, got {format_shape(b)}")
        if b[1] % self.group:
            raise self.shape_error(f"{b[1]} channels are not divisible by group {self.group}")
        return [b]

    def summary(self) -> str:
        return f"g{self.group}"

    def forward(self, e: Emit) -> None:
        """Output channel j*group + i is input channel i*(C/group) + j (shuffle_channel_layer.cpp)."""
        b = e.bottom_shapes[0]
        g = e.g
        rows = g.reshape(e.bottoms[0], e.static_shape([b[0], self.group, b[1] // self.group, -1]))
        cols = g.op1("Transpose", [rows], perm=[0, 2, 1, 3])
        g.reshape(cols, e.static_shape(b), e.tops[0])


@register_layer("Interp")
class Interp(LayerDef):
    """Bilinear resize (align-corners); size from shrink/zoom factors, height/width, or a second bottom.

    With H' = H + pad_beg + pad_end: shrink s gives (H'-1)/s + 1, zoom z gives H' + (H'-1)(z-1),
    both shrink then zoom when both are given (hszhao/PSPNet interp_layer.cpp, the rules checked in
    that order after height/width). Cost: 4 MACs per output value.
    """

    family = "reshape"
    bottoms = (1, 2)

    def setup(self) -> None:
        p = self.lp.interp_param
        self.zoom = p.zoom_factor if p.HasField("zoom_factor") else None
        self.shrink = p.shrink_factor if p.HasField("shrink_factor") else None
        if p.HasField("height") != p.HasField("width"):
            raise self.error("interp_param height and width must be given together")
        self.size = (p.height, p.width) if p.HasField("height") else None
        self.pad = (p.pad_beg, p.pad_end)
        if p.pad_beg > 0 or p.pad_end > 0:
            raise self.error(f"pad_beg {p.pad_beg} / pad_end {p.pad_end}: only non-positive padding (cropping) is supported")
        if self.zoom is not None and self.zoom < 1:
            raise self.error(f"zoom_factor must be >= 1, got {self.zoom}")
        if self.shrink is not None and self.shrink < 1:
            raise self.error(f"shrink_factor must be >= 1, got {self.shrink}")
        if self.size is not None and min(self.size) < 1:
            raise self.error(f"height/width must be positive, got {self.size[0]}x{self.size[1]}")
        has_spec = self.zoom is not None or self.shrink is not None or self.size is not None
        if len(self.lp.bottom) == 2 and has_spec:
            # The two-bottom form (e.g. yangguorun/SegStereo interp_layer.cpp) requires exactly one spec.
            raise self.error("the output size comes from the second bottom; drop zoom_factor/shrink_factor/height/width")
        if len(self.lp.bottom) < 2 and not has_spec:
            raise self.error("give zoom_factor, shrink_factor, height and width, or a second bottom for the output size")

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        b = bottoms[0]
        if len(b) != 4:
            raise self.shape_error(f"expects a 4-D bottom (N,C,H,W), got {format_shape(b)}")
        h_eff, w_eff = b[2] + sum(self.pad), b[3] + sum(self.pad)
        if h_eff < 1 or w_eff < 1:
            raise self.shape_error(f"padding {self.pad[0]}/{self.pad[1]} leaves an empty {h_eff}x{w_eff} input")

        def shrink(x: int) -> int:
            return (x - 1) // self.shrink + 1

        def zoom(x: int) -> int:
            return x + (x - 1) * (self.zoom - 1)

        if self.shrink is not None and self.zoom is None:
            out = (shrink(h_eff), shrink(w_eff))
        elif self.zoom is not None and self.shrink is None:
            out = (zoom(h_eff), zoom(w_eff))
        elif self.size is not None:
            out = self.size
        elif self.shrink is not None and self.zoom is not None:
            out = (zoom(shrink(h_eff)), zoom(shrink(w_eff)))
        else:
            ref = bottoms[1]
            if len(ref) != 4:
                raise self.shape_error(f"the size bottom must be 4-D (N,C,H,W), got {format_shape(ref)}")
            out = (ref[2], ref[3])
        return [(b[0], b[1], *out)]

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        n = count(tops[0])
        return Cost(4 * n, 8 * n)

    def forward(self, e: Emit) -> None:
        """Crop by -pad_beg/-pad_end, then bilinear resize with align-corners coordinates.

        The fork's caffe_cpu_interp2 maps output row h2 to h2 * (H1 - 1) / (H2 - 1) (0 when H2 is 1)
        and blends the two neighbouring rows (the last row with itself): ONNX Resize in linear mode
        with align_corners does the same; sizes equal means a copy, as in the fork.
        """
        b, top = e.bottom_shapes[0], e.top_shapes[0]
        g, x = e.g, e.bottoms[0]
        beg, end = self.pad
        if beg or end:  # non-positive pads crop [-pad_beg, H + pad_end) on both axes
            x = g.op1("Slice", [x, g.const([-beg, -beg]), g.const([b[2] + end, b[3] + end]), g.const([2, 3])])
        if (b[2] + beg + end, b[3] + beg + end) == tuple(top[2:]):
            g.op("Identity", [x], e.tops[:1])
            return
        g.op("Resize", [x, "", "", _full_shape(e, x, list(top[2:]))], e.tops[:1], mode="linear",
             coordinate_transformation_mode="align_corners")

    def summary(self) -> str:
        parts = []
        if self.shrink is not None:
            parts.append(f"shrink {self.shrink}")
        if self.zoom is not None:
            parts.append(f"zoom {self.zoom}")
        if self.size is not None and not parts:
            parts.append(f"{self.size[0]}x{self.size[1]}")
        if not parts:
            parts.append("to bottom 1")
        if any(self.pad):
            parts.append(f"pad {self.pad[0]}/{self.pad[1]}")
        return ", ".join(parts)


@register_layer("Upsample")
class Upsample(LayerDef):
    """SegNet max-unpooling (bottoms data, mask) or nearest upsampling (one bottom): H*scale_h - pad_out_h.

    ``upsample_h``/``upsample_w`` give the size directly (alexgkendall/caffe-segnet upsample_layer.cpp);
    the single-bottom form is the YOLOv3 ports' nearest-neighbour ``upsample_param { scale }``.
    No arithmetic is counted: both only move values.
    """

    family = "pool"
    bottoms = (1, 2)

    def setup(self) -> None:
        p = self.lp.upsample_param
        has_size = p.HasField("upsample_h") and p.HasField("upsample_w")
        ok = has_size or (not p.HasField("scale") and p.HasField("scale_h") and p.HasField("scale_w")) or (
            not p.HasField("scale_h") and not p.HasField("scale_w")
        )
        if not ok:
            raise self.error("give upsample_h and upsample_w, or scale, or scale_h and scale_w (not scale with scale_h/scale_w)")
        self.size: tuple[int, int] | None = None
        self.scale = (0, 0)
        self.pad_out = (0, 0)
        if has_size:
            self.size = (p.upsample_h, p.upsample_w)
            if min(self.size) <= 1:
                raise self.error(f"upsample_h/upsample_w must be > 1, got {self.size[0]}x{self.size[1]}")
            return
        self.scale = (p.scale_h, p.scale_w) if p.HasField("scale_h") else (p.scale, p.scale)
        # SegNet requires scale > 1; the YOLO ports accept 1 (a copy), so only 0 is rejected for one bottom.
        low = 1 if len(self.lp.bottom) == 2 else 0
        if min(self.scale) <= low:
            raise self.error(f"scale must be > {low}, got {self.scale[0]}x{self.scale[1]}")
        self.pad_out = (int(p.pad_out_h), int(p.pad_out_w))
        for what, pad, s in (("h", self.pad_out[0], self.scale[0]), ("w", self.pad_out[1], self.scale[1])):
            if pad and s != 2:
                raise self.error(f"pad_out_{what} requires scale_{what} == 2, got {s}")

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        b = bottoms[0]
        if len(b) != 4:
            raise self.shape_error(f"expects a 4-D bottom (N,C,H,W), got {format_shape(b)}")
        if len(bottoms) == 2 and bottoms[1] != b:
            raise self.shape_error(f"the mask {format_shape(bottoms[1])} must have the shape of the data {format_shape(b)}")
        if self.size is not None:
            return [(b[0], b[1], *self.size)]
        return [(b[0], b[1], b[2] * self.scale[0] - self.pad_out[0], b[3] * self.scale[1] - self.pad_out[1])]

    def forward(self, e: Emit) -> None:
        """SegNet: scatter each value to the plane index its mask holds (top zero elsewhere; index
        >= top plane size is an error, as Caffe's LOG(FATAL)). One bottom: nearest-neighbour copy,
        top[h][w] = bottom[h / scale_h][w / scale_w], then the pad_out row/column dropped."""
        import numpy as np
        from onnx import numpy_helper

        b, top = e.bottom_shapes[0], e.top_shapes[0]
        g, x = e.g, e.bottoms[0]
        if len(e.bottoms) == 2:
            plane = top[2] * top[3]
            vals = g.reshape(x, e.static_shape([b[0], b[1], b[2] * b[3]]))
            idx = g.reshape(g.op1("Cast", [e.bottoms[1]], to=7), e.static_shape([b[0], b[1], b[2] * b[3]]))
            zeros = g.op1("ConstantOfShape", [_full_shape(e, x, [plane])], value=numpy_helper.from_array(np.zeros(1, g.dtype)))
            out = g.op1("ScatterElements", [zeros, idx, vals], axis=2)
            g.reshape(out, e.static_shape(top), e.tops[0])
            return
        if self.size is not None:
            raise self.error("nearest-neighbour upsampling (one bottom) needs scale, not upsample_h/upsample_w")
        (sh, sw), (h, w) = self.scale, (b[2] * self.scale[0], b[3] * self.scale[1])
        y = g.reshape(x, e.static_shape([b[0], b[1], b[2], 1, b[3], 1]))
        y = g.op1("Expand", [y, g.const(np.asarray([1, 1, 1, sh, 1, sw], np.int64))])
        if (h, w) == tuple(top[2:]):
            g.reshape(y, e.static_shape(top), e.tops[0])
            return
        y = g.reshape(y, e.static_shape([b[0], b[1], h, w]))
        g.op("Slice", [y, g.const([0, 0]), g.const(list(top[2:])), g.const([2, 3])], e.tops[:1])

    def summary(self) -> str:
        if self.size is not None:
            return f"{self.size[0]}x{self.size[1]}"
        s = f"x{self.scale[0]}" if self.scale[0] == self.scale[1] else f"x{self.scale[0]}x{self.scale[1]}"
        return s + (" pad_out" if any(self.pad_out) else "")
