"""Spatial layers from popular forks: ShuffleChannel (ShuffleNet), Interp (PSPNet/DeepLab), Upsample
(SegNet's max-unpooling, and the single-bottom nearest-neighbour form of the YOLO ports).

Cost conventions: a bilinear output value is 4 MACs (one weighted tap per neighbour, FLOPs = 2 x MACs);
pure data movement (channel shuffle, unpooling scatter, nearest-neighbour repeat) costs nothing.
"""

from __future__ import annotations

from dnntool.layers.base import Cost, LayerDef, Shape, count
from dnntool.layers.registry import register_layer


def _fmt(s: Shape) -> str:
    return "x".join(str(d) for d in s) if s else "scalar"


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
            raise self.shape_error(f"expects a bottom with a channel axis, got {_fmt(b)}")
        if b[1] % self.group:
            raise self.shape_error(f"{b[1]} channels are not divisible by group {self.group}")
        return [b]

    def summary(self) -> str:
        return f"g{self.group}"


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
            raise self.shape_error(f"expects a 4-D bottom (N,C,H,W), got {_fmt(b)}")
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
                raise self.shape_error(f"the size bottom must be 4-D (N,C,H,W), got {_fmt(ref)}")
            out = (ref[2], ref[3])
        return [(b[0], b[1], *out)]

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        n = count(tops[0])
        return Cost(4 * n, 8 * n)

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
            raise self.shape_error(f"expects a 4-D bottom (N,C,H,W), got {_fmt(b)}")
        if len(bottoms) == 2 and bottoms[1] != b:
            raise self.shape_error(f"the mask {_fmt(bottoms[1])} must have the shape of the data {_fmt(b)}")
        if self.size is not None:
            return [(b[0], b[1], *self.size)]
        return [(b[0], b[1], b[2] * self.scale[0] - self.pad_out[0], b[3] * self.scale[1] - self.pad_out[1])]

    def summary(self) -> str:
        if self.size is not None:
            return f"{self.size[0]}x{self.size[1]}"
        s = f"x{self.scale[0]}" if self.scale[0] == self.scale[1] else f"x{self.scale[0]}x{self.scale[1]}"
        return s + (" pad_out" if any(self.pad_out) else "")
