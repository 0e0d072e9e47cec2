"""Detection and other fork layers: SSD, Fast/Faster R-CNN, R-FCN, Caffe's Python layer, FlowNet's
Correlation, DeepLab/PSPNet segmentation data and accuracy, SqueezeDet, and the colorization loss.

Shapes follow what each fork's ``LayerSetUp``/``Reshape`` sets when the net is built; layers whose
outputs only become known in ``Forward`` (detections, proposals, sampled RoIs) report that setup
shape, as Caffe's own shape log does. Cost conventions: post-processing whose work depends on the
data (prior generation, box decoding, NMS, matching, OHEM sorting) counts nothing; losses count a
few FLOPs per predicted value (smooth L1: 4, or 6 with weights; softmax-based: 5); RoI pooling counts
one operation per output value; Correlation counts one MAC per kernel tap and channel.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable, Sequence

from dnntool.errors import NeedsInputShape
from dnntool.layers.base import (
    Cost,
    DataLayer,
    Emit,
    LayerDef,
    LossLayer,
    Shape,
    count,
    count_range,
    format_shape,
)
from dnntool.layers.loss import SoftmaxWithLoss, batch_count
from dnntool.layers.registry import register_layer
from dnntool.proto import caffe_pb2


class _LazyOps:
    """``detection_ops`` (numpy ONNX builders) imported on first use: analysis commands never need it."""

    def __getattr__(self, name: str):
        from dnntool.layers import detection_ops

        return getattr(detection_ops, name)


ops = _LazyOps()

# ---------------------------------------------------------------------------------------------
# helpers




def _legacy(layer: LayerDef, s: Shape, i: int) -> int:
    """Caffe's ``Blob::LegacyShape``: num/channels/height/width, 1 past the last axis (<= 4 axes)."""
    if len(s) > 4:
        raise layer.shape_error(f"blob {format_shape(s)} has {len(s)} axes; this layer reads num/channels/height/width (<= 4)")
    return s[i] if i < len(s) else 1


def _chw(layer: LayerDef, s: Shape) -> tuple[int, int, int]:
    return _legacy(layer, s, 1), _legacy(layer, s, 2), _legacy(layer, s, 3)


def _same_layout(e: Emit) -> list[str]:
    """The bottoms, each viewed with bottom 0's shape (the forks index them by position only)."""
    ref = e.bottom_shapes[0]
    return [x if s == ref else e.g.reshape(x, [-1, *ref[1:]])
            for x, s in zip(e.bottoms, e.bottom_shapes, strict=True)]


def _per_batch(e: Emit, norm: float, scales: bool) -> str:
    """A loss normaliser; one that counts per sample (N, N*H*W) follows the runtime batch size."""
    if e.batch is None or not scales:
        return e.g.scalar(norm)
    return e.g.op1("Max", [batch_count(e, e.bottoms[0], norm), e.g.scalar(1.0)])


def _scale_str(scale: float) -> str:
    if scale > 0 and abs(1 / scale - round(1 / scale)) < 1e-6 and scale < 1:
        return f"1/{round(1 / scale)}"
    return f"{scale:g}"


def _resolve_tops(layer: LayerDef, derived: Sequence[Shape | None], why: str,
                  examples: Sequence[str] = ()) -> list[Shape]:
    """Each top's shape from ``--input-shape`` if given, else ``derived[i]``; one error names every gap."""
    out: list[Shape] = []
    missing: list[str] = []
    for i, top in enumerate(layer.lp.top):
        given = layer.ctx.input_shape(top)
        if given is not None:
            out.append(given)
        elif i < len(derived) and derived[i] is not None:
            out.append(derived[i])  # type: ignore[arg-type]
        else:
            ex = examples[i] if i < len(examples) and examples[i] else "N,C,H,W"
            missing.append(f"--input-shape {top}={ex}")
            out.append(())
    if missing:
        raise layer.error(f"{why}; give {'its shape' if len(missing) == 1 else 'the shapes'} with {' '.join(missing)}",
                          NeedsInputShape)
    return out


# ---------------------------------------------------------------------------------------------
# SSD (weiliu89/caffe, branch ssd)


@register_layer("PriorBox")
class PriorBox(LayerDef):
    """SSD default boxes: top (1, 2, H*W*P*4), P = |ratios with 1 and flips| * |min_size| + |max_size| (x OpenCV offsets)."""

    family = "detection"
    bottoms = (2, 2)

    def setup(self) -> None:
        p = self.lp.prior_box_param
        if len(p.width) != len(p.height):
            raise self.error(f"{len(p.width)} width values for {len(p.height)} height values")
        if p.width:
            # OpenCV's explicit box sizes (prior_box_layer.cpp): exclusive with the size/ratio fields.
            if p.min_size or p.max_size or p.aspect_ratio:
                raise self.error("explicit width/height exclude min_size, max_size and aspect_ratio")
            self.min_sizes: list[float] = []
            self.ratios: list[float] = []
            self.num_priors = len(p.width)
        else:
            self._sizes_and_ratios(p)
        if p.offset_h or p.offset_w:
            # OpenCV: one centre per (offset_h, offset_w) pair; it multiplies the box count by
            # max(1, 2 * (pairs - 1)) (TextBoxes uses two pairs: x2).
            if len(p.offset_h) != len(p.offset_w):
                raise self.error(f"{len(p.offset_h)} offset_h values for {len(p.offset_w)} offset_w values")
            if p.HasField("offset"):
                raise self.error("give either offset or offset_h/offset_w, not both")
            self.num_priors *= max(1, 2 * (len(p.offset_h) - 1))
        if len(p.variance) not in (0, 1, 4):
            raise self.error(f"give 1 or 4 variance values, got {len(p.variance)}")
        if any(v <= 0 for v in p.variance):
            raise self.error(f"variance values must be positive, got {list(p.variance)}")
        for whole, h, w in (("img_size", "img_h", "img_w"), ("step", "step_h", "step_w")):
            if p.HasField(h) or p.HasField(w):
                if p.HasField(whole):
                    raise self.error(f"give either {whole} or {h}/{w}, not both")
                if getattr(p, h) <= 0 or getattr(p, w) <= 0:
                    raise self.error(f"{h} and {w} must both be positive, got {getattr(p, h):g}/{getattr(p, w):g}")
            elif p.HasField(whole) and getattr(p, whole) <= 0:
                raise self.error(f"{whole} must be positive, got {getattr(p, whole):g}")

    def _sizes_and_ratios(self, p: caffe_pb2.PriorBoxParameter) -> None:
        if not p.min_size:
            raise self.error("prior_box_param.min_size is required")
        self.min_sizes = list(p.min_size)
        if min(self.min_sizes) <= 0:
            raise self.error(f"min_size must be positive, got {self.min_sizes}")
        ratios = [1.0]
        for ar in p.aspect_ratio:
            if ar <= 0:
                raise self.error(f"aspect_ratio must be positive, got {ar:g}")
            if any(abs(ar - r) < 1e-6 for r in ratios):
                continue  # duplicates (and 1) are skipped, as prior_box_layer.cpp does
            ratios.append(ar)
            if p.flip:
                ratios.append(1.0 / ar)
        self.ratios = ratios
        self.num_priors = len(ratios) * len(self.min_sizes)
        if p.max_size:
            if len(p.max_size) != len(self.min_sizes):
                raise self.error(f"{len(p.max_size)} max_size values for {len(self.min_sizes)} min_size values")
            for lo, hi in zip(self.min_sizes, p.max_size, strict=True):
                if hi <= lo:
                    raise self.error(f"max_size {hi:g} must be greater than min_size {lo:g}")
            self.num_priors += len(p.max_size)

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        h, w = _legacy(self, bottoms[0], 2), _legacy(self, bottoms[0], 3)
        return [(1, 2, h * w * self.num_priors * 4)]

    def forward(self, e: Emit) -> None:
        """A constant: the priors depend only on the two bottoms' shapes (see ops.prior_boxes)."""
        p = self.lp.prior_box_param
        if len(p.offset_h) > 2:
            raise self.error(f"{len(p.offset_h)} offset_h/offset_w pairs: OpenCV's prior count"
                             " (x 2(n-1)) disagrees with the centres it generates (x n) beyond 2 pairs")
        feat, image = e.bottom_shapes
        boxes = ops.prior_boxes(p, self.ratios, (_legacy(self, feat, 2), _legacy(self, feat, 3)),
                                (_legacy(self, image, 2), _legacy(self, image, 3)))
        e.g.op("Identity", [e.g.const(boxes.astype(e.g.dtype))], e.tops[:1])

    def summary(self) -> str:
        mins = f", min {','.join(f'{m:g}' for m in self.min_sizes)}" if self.min_sizes else ""
        return f"{self.num_priors}/cell{mins}"


def _check_box_predictions(layer: LayerDef, bottoms: list[Shape], num_classes: int, loc_classes: int) -> int:
    """SSD's Reshape checks: loc (N, P*loc_classes*4), conf (N, P*classes), priors (1, 2, P*4)."""
    loc, conf, prior = bottoms[:3]
    num_priors = _legacy(layer, prior, 2) // 4
    if _legacy(layer, loc, 0) != _legacy(layer, conf, 0):
        raise layer.shape_error(f"location {format_shape(loc)} and confidence {format_shape(conf)} predictions differ in batch size")
    if num_priors * loc_classes * 4 != _legacy(layer, loc, 1):
        raise layer.shape_error(
            f"{num_priors} priors x {loc_classes} location classes x 4 = {num_priors * loc_classes * 4}"
            f" but the location predictions {format_shape(loc)} have {_legacy(layer, loc, 1)} channels")
    if num_priors * num_classes != _legacy(layer, conf, 1):
        raise layer.shape_error(
            f"{num_priors} priors x {num_classes} classes = {num_priors * num_classes}"
            f" but the confidence predictions {format_shape(conf)} have {_legacy(layer, conf, 1)} channels")
    return num_priors


@register_layer("DetectionOutput")
class DetectionOutput(LayerDef):
    """SSD decode + per-class NMS + keep_top_k: rows [image, label, score, xmin, ymin, xmax, ymax]; (1,1,1,7) at setup.

    Not translated: NMS post-processing whose number of rows depends on the data.
    """

    family = "detection"
    translatable = False
    bottoms = (3, 4)  # loc, conf, priors (+ the image in OpenCV's variant, unused for shapes)

    def setup(self) -> None:
        p = self.lp.detection_output_param
        if not p.HasField("num_classes"):
            raise self.error("detection_output_param.num_classes is required")
        self.num_classes = p.num_classes
        self.loc_classes = 1 if p.share_location else p.num_classes
        if p.nms_param.nms_threshold < 0:
            raise self.error(f"nms_threshold must be non-negative, got {p.nms_param.nms_threshold:g}")
        if not 0 < p.nms_param.eta <= 1:
            raise self.error(f"nms_param.eta must be in (0, 1], got {p.nms_param.eta:g}")

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        _check_box_predictions(self, bottoms, self.num_classes, self.loc_classes)
        # The number of kept boxes is only known after NMS; Reshape sets a fake single row.
        return [(1, 1, 1, 7)]

    def summary(self) -> str:
        k = self.lp.detection_output_param.keep_top_k
        return f"{self.num_classes} classes" + (f", keep {k}" if k >= 0 else "")


@register_layer("MultiBoxLoss")
class MultiBoxLoss(LossLayer):
    """SSD loss: prior/ground-truth matching, hard negative mining, smooth L1 on locations + softmax on confidences.

    Not translated: a training loss whose matching and mining are data-dependent C++ loops.
    """

    family = "loss"
    translatable = False
    bottoms = (4, 4)  # loc, conf, priors, ground truth (1, 1, G, 8)

    def setup(self) -> None:
        p = self.lp.multibox_loss_param
        if not p.HasField("num_classes"):
            raise self.error("multibox_loss_param.num_classes is required")
        if p.num_classes < 1:
            raise self.error(f"num_classes must be >= 1, got {p.num_classes}")
        self.num_classes = p.num_classes
        self.loc_classes = 1 if p.share_location else p.num_classes
        if p.map_object_to_agnostic and p.num_classes != 2:
            raise self.error(f"map_object_to_agnostic needs num_classes 2 (with a background), got {p.num_classes}")
        mining = p.mining_type != caffe_pb2.MultiBoxLossParameter.NONE or p.do_neg_mining
        if mining and not p.share_location:
            raise self.error("negative mining needs share_location: true")

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        _check_box_predictions(self, bottoms, self.num_classes, self.loc_classes)
        return [()]

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        return Cost(0, 5 * count(bottoms[1]) + 4 * count(bottoms[0]))

    def summary(self) -> str:
        return f"{self.num_classes} classes"


@register_layer("DetectionEvaluate")
class DetectionEvaluate(LayerDef):
    """SSD mAP bookkeeping: rows [image, label, score, tp, fp]; (1, 1, positive classes + detections, 5).

    Not translated: evaluation over a data-dependent detection list.
    """

    family = "loss"
    translatable = False
    bottoms = (2, 2)  # detections (1, 1, D, 7), ground truth (1, 1, G, 8)

    def setup(self) -> None:
        p = self.lp.detection_evaluate_param
        if not p.HasField("num_classes"):
            raise self.error("detection_evaluate_param.num_classes is required")
        if p.overlap_threshold <= 0:
            raise self.error(f"overlap_threshold must be positive, got {p.overlap_threshold:g}")

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        det, gt = bottoms
        for what, s, width in (("detections", det, 7), ("ground truth", gt, 8)):
            n, c, w = _legacy(self, s, 0), _legacy(self, s, 1), _legacy(self, s, 3)
            if (n, c, w) != (1, 1, width):
                raise self.shape_error(f"{what} must be (1, 1, rows, {width}), got {format_shape(s)}")
        p = self.lp.detection_evaluate_param
        positive = p.num_classes - (0 if p.background_label_id == -1 else 1)
        # Caffe counts the rows whose label is not -1; at setup every row counts.
        return [(1, 1, positive + _legacy(self, det, 2), 5)]


@register_layer("AnnotatedData")
class AnnotatedData(DataLayer):
    """SSD data layer (AnnotatedDatum LMDB): data (batch, C, H, W) after resize/crop; label (1, 1, boxes, 8)."""

    tops = (1, 2)

    def _hw(self) -> tuple[int, int] | None:
        t = self.lp.transform_param
        h = w = 0
        if t.HasField("resize_param"):
            r = t.resize_param
            if r.resize_mode != caffe_pb2.ResizeParameter.FIT_SMALL_SIZE and r.height and r.width:
                h, w = r.height, r.width  # WARP and FIT_LARGE_SIZE_AND_PAD give exactly height x width
        ch, cw = (t.crop_size, t.crop_size) if t.crop_size else (t.crop_h, t.crop_w)
        if h and w and (ch > h or cw > w):
            raise self.shape_error(f"crop {ch}x{cw} is larger than the {h}x{w} resized images")
        h, w = ch or h, cw or w
        return (h, w) if h and w else None

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        batch = self.lp.data_param.batch_size or 1
        channels = 1 if self.lp.transform_param.force_gray else 3
        hw = self._hw()
        data = (batch, channels, *hw) if hw else None
        # One box row per batch at setup (Caffe keeps at least one; the count varies per batch).
        label = (1, 1, 1, 8)
        return _resolve_tops(
            self, [data, label],
            "the AnnotatedDatum LMDB is not read and transform_param gives no resize_param height/width or crop",
            [f"{batch},{channels},H,W", "1,1,1,8"],
        )

    def summary(self) -> str:
        return f"batch {self.lp.data_param.batch_size or 1}"


# ---------------------------------------------------------------------------------------------
# Fast / Faster R-CNN (rbgirshick/caffe-fast-rcnn), R-FCN (daijifeng001/caffe-rfcn, py-R-FCN)


@register_layer("ROIPooling")
class ROIPooling(LayerDef):
    """Fast R-CNN RoI max pooling: rois (R, 5) [batch, x1, y1, x2, y2] -> (R, C, pooled_h, pooled_w)."""

    family = "pool"
    bottoms = (2, 2)

    def setup(self) -> None:
        p = self.lp.roi_pooling_param
        if p.pooled_h <= 0 or p.pooled_w <= 0:
            raise self.error(f"pooled_h and pooled_w must be > 0, got {p.pooled_h}x{p.pooled_w}")
        self.pooled = (p.pooled_h, p.pooled_w)

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        data, rois = bottoms
        if math.prod(_chw(self, rois)) != 5:
            raise self.shape_error(f"rois {format_shape(rois)} must hold 5 values per RoI (R, 5)")
        return [(_legacy(self, rois, 0), _legacy(self, data, 1), *self.pooled)]

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        return Cost(0, count(tops[0]))

    def forward(self, e: Emit) -> None:
        rois = e.g.reshape(e.bottoms[1], [-1, 5])
        ops.emit_roi_max_pool(e, e.bottoms[0], rois, self.pooled, self.lp.roi_pooling_param.spatial_scale,
                              e.tops[0])

    def summary(self) -> str:
        return f"{self.pooled[0]}x{self.pooled[1]}, scale {_scale_str(self.lp.roi_pooling_param.spatial_scale)}"


@register_layer("PSROIPooling")
class PSROIPooling(LayerDef):
    """R-FCN position-sensitive RoI average pooling: C = output_dim*k*k -> (R, output_dim, k, k), k = group_size."""

    family = "pool"
    bottoms = (2, 2)

    def setup(self) -> None:
        p = self.lp.psroi_pooling_param
        for f in ("spatial_scale", "output_dim", "group_size"):
            if not p.HasField(f):
                raise self.error(f"psroi_pooling_param.{f} is required")
        if p.output_dim <= 0 or p.group_size <= 0:
            raise self.error(f"output_dim and group_size must be > 0, got {p.output_dim} and {p.group_size}")
        self.dim, self.group = p.output_dim, p.group_size

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        data, rois = bottoms
        c = _legacy(self, data, 1)
        if c != self.dim * self.group * self.group:
            raise self.shape_error(
                f"input has {c} channels but output_dim {self.dim} x group_size {self.group}^2 ="
                f" {self.dim * self.group * self.group}")
        return [(_legacy(self, rois, 0), self.dim, self.group, self.group)]

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        return Cost(0, count(tops[0]))

    def forward(self, e: Emit) -> None:
        data = e.bottom_shapes[0]
        if len(data) != 4:
            raise self.shape_error(f"expects a 4-D bottom (N,C,H,W), got {format_shape(data)}")
        rois = e.g.reshape(e.bottoms[1], [-1, 5])
        ops.emit_psroi_pool(e, e.bottoms[0], rois, data, self.dim, self.group,
                            self.lp.psroi_pooling_param.spatial_scale, e.tops[0])

    def summary(self) -> str:
        g = self.group
        return f"{self.dim}x{g}x{g}, scale {_scale_str(self.lp.psroi_pooling_param.spatial_scale)}"


@register_layer("SmoothL1Loss")
class SmoothL1Loss(LossLayer):
    """Fast R-CNN box loss: sum w_out * smoothL1(sigma, w_in * (pred - target)); bottoms pred, target[, w_in, w_out]."""

    family = "loss"
    # rbgirshick's fork takes 2 or 4 bottoms (inside and outside weights); R-FCN's and SSD's take a
    # single weight blob as a third bottom, so 3 is accepted too.
    bottoms = (2, 4)

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        ref = _chw(self, bottoms[0])
        for i, b in enumerate(bottoms[1:], 1):
            if _chw(self, b) != ref:
                raise self.shape_error(
                    f"bottom {i} {format_shape(b)} must match the predictions {format_shape(bottoms[0])} in channels, height and width")
        return [()]

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        return Cost(0, (6 if len(bottoms) > 2 else 4) * count(bottoms[0]))

    def forward(self, e: Emit) -> None:
        """rbg's fork: sum |w_out * smoothL1(w_in * (pred - target))| / N (caffe_gpu_asum, then / num).

        An explicit loss_param normalization/normalize follows R-FCN's variant of this layer instead.
        """
        g = e.g
        b = _same_layout(e)
        d = g.op1("Sub", [b[0], b[1]])
        if len(b) > 2:
            d = g.op1("Mul", [b[2], d])
        sigma = float(self.lp.smooth_l1_loss_param.sigma)
        err = ops.smooth_l1(e, d, sigma * sigma)
        if len(b) > 3:
            err = g.op1("Mul", [b[3], err])
        lp, shape = self.lp.loss_param, e.bottom_shapes[0]
        n = _legacy(self, shape, 0)
        if lp.HasField("normalization") or lp.HasField("normalize"):
            norm, scales = ops.rfcn_normalizer(lp, n, _legacy(self, shape, 2) * _legacy(self, shape, 3))
        else:
            norm, scales = float(max(1, n)), True
        total = g.op1("ReduceSum", [g.op1("Abs", [err])], keepdims=0)
        g.op("Div", [total, _per_batch(e, norm, scales)], e.tops[:1])

    def summary(self) -> str:
        p = self.lp.smooth_l1_loss_param
        return f"sigma {p.sigma:g}" if p.HasField("sigma") else ""


@register_layer("SmoothL1LossOHEM")
class SmoothL1LossOHEM(LossLayer):
    """R-FCN OHEM smooth L1 (sigma 1); top 1 = per-RoI loss, the predictions' shape with axis 1 = 1."""

    family = "loss"
    bottoms = (2, 3)
    tops = (1, 2)

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        pred = bottoms[0]
        for i, b in enumerate(bottoms[1:], 1):
            if len(b) < len(pred) or any(pred[k] != b[k] for k in range(1, len(pred))):
                raise self.shape_error(f"bottom {i} {format_shape(b)} must match the predictions {format_shape(pred)} beyond axis 0")
        if len(pred) < 2:
            raise self.shape_error(f"predictions must have a channel axis, got {format_shape(pred)}")
        return [(), (pred[0], 1, *pred[2:])]

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        return Cost(0, (5 if len(bottoms) > 2 else 4) * count(bottoms[0]))

    def forward(self, e: Emit) -> None:
        """sum |smoothL1(w * (pred - target))| / R-FCN's normaliser (VALID: N*H*W); top 1 = the
        per-RoI sum over channels (smooth_L1_loss_ohem_layer.cu, sigma 1)."""
        g = e.g
        b = _same_layout(e)
        d = g.op1("Sub", [b[0], b[1]])
        if len(b) > 2:
            d = g.op1("Mul", [b[2], d])
        err = ops.smooth_l1(e, d, 1.0)
        shape = e.bottom_shapes[0]
        norm, scales = ops.rfcn_normalizer(self.lp.loss_param, shape[0], count_range(shape, 2))
        total = g.op1("ReduceSum", [g.op1("Abs", [err])], keepdims=0)
        g.op("Div", [total, _per_batch(e, norm, scales)], e.tops[:1])
        if len(e.tops) > 1:
            g.op("ReduceSum", [err, g.const([1])], e.tops[1:2], keepdims=1)


@register_layer("SoftmaxWithLossOHEM")
class SoftmaxWithLossOHEM(SoftmaxWithLoss):
    """R-FCN OHEM softmax loss: tops loss, probabilities (like the scores), per-RoI loss (like the labels).

    SoftmaxWithLoss's loss and probabilities; top 2 is each position's -log(max(p[label], FLT_MIN)),
    0 where ignored (softmax_loss_ohem_layer.cu).
    """

    family = "loss"
    tops = (1, 3)

    def forward(self, e: Emit) -> None:
        super().forward(e)
        if len(e.tops) > 2:
            e.g.reshape(e.extra["nll"], [-1, *e.top_shapes[2][1:]] if e.top_shapes[2] else [], e.tops[2])

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        pred, label = bottoms
        ax = self.canonical_axis(self.lp.softmax_param.axis, len(pred))
        outer, inner = count_range(pred, 0, ax), count_range(pred, ax + 1)
        if outer * inner != count(label):
            raise self.shape_error(
                f"label {format_shape(label)} has {count(label)} values but scores {format_shape(pred)} need {outer * inner}")
        return [(), pred, label]

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        return Cost(0, 5 * count(bottoms[0]))


@register_layer("BoxAnnotatorOHEM")
class BoxAnnotatorOHEM(LayerDef):
    """R-FCN OHEM: keeps the roi_per_img hardest RoIs; tops labels (R, 1, H, W) and box loss weights (R, 4K, H, W).

    Not translated: training-time hard-example selection (sorts RoIs by loss).
    """

    family = "detection"
    translatable = False
    bottoms = (4, 4)  # rois, per-RoI loss, labels, bbox weights
    tops = (2, 2)

    def setup(self) -> None:
        p = self.lp.box_annotator_ohem_param
        if not p.HasField("roi_per_img") or p.roi_per_img <= 0:
            raise self.error(f"box_annotator_ohem_param.roi_per_img must be > 0, got {p.roi_per_img}")

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        rois, loss, labels, weights = bottoms
        n = _legacy(self, rois, 0)
        c, h, w = _chw(self, rois)
        if c != 5:
            raise self.shape_error(f"rois {format_shape(rois)} must have 5 channels")
        for what, b, ch in (("per-RoI loss", loss, 1), ("labels", labels, 1), ("bbox weights", weights, None)):
            bn, bc, bh, bw = _legacy(self, b, 0), *_chw(self, b)
            if bn != n or (ch is not None and bc != ch) or (bh, bw) != (h, w):
                want = f"({n}, {ch if ch is not None else 'C'}, {h}, {w})"
                raise self.shape_error(f"{what} {format_shape(b)} must be {want} to match rois {format_shape(rois)}")
        return [(n, 1, h, w), (n, _legacy(self, weights, 1), h, w)]

    def summary(self) -> str:
        return f"{self.lp.box_annotator_ohem_param.roi_per_img} RoIs"


_DEFAULT_RATIOS = (0.5, 1.0, 2.0)
_DEFAULT_SCALES = (8.0, 16.0, 32.0)


@register_layer("Proposal")
class Proposal(LayerDef):
    """RPN proposals (C++ layer, OpenCV's proposal_param): rois (post_nms_topn, 5) [+ scores (post_nms_topn, 1)].

    Anchors: |ratio| x |scale| (0.5,1,2 x 8,16,32 when unset); scores (1, 2A, H, W), deltas (1, 4A, H, W).
    Not translated: NMS over proposals, a data-dependent number of RoIs.
    """

    family = "detection"
    translatable = False
    bottoms = (3, 3)  # objectness scores, box deltas, im_info
    tops = (1, 2)
    # OpenCV allocates post_nms_topn rows (fewer may be filled); the Caffe C++ forks set (1, 5) at setup
    # and resize in Forward. We report OpenCV's size: the most RoIs the layer can emit.

    def setup(self) -> None:
        p = self.lp.proposal_param
        self.anchors = len(p.ratio or _DEFAULT_RATIOS) * len(p.scale or _DEFAULT_SCALES)
        if p.feat_stride <= 0 or p.post_nms_topn <= 0:
            raise self.error(f"feat_stride and post_nms_topn must be > 0, got {p.feat_stride} and {p.post_nms_topn}")
        if any(r <= 0 for r in p.ratio) or any(s <= 0 for s in p.scale):
            raise self.error(f"ratio and scale values must be positive, got {list(p.ratio)} and {list(p.scale)}")

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        scores, deltas, _ = bottoms
        a = self.anchors
        if len(scores) != 4 or len(deltas) != 4:
            raise self.shape_error(f"scores {format_shape(scores)} and deltas {format_shape(deltas)} must be 4-D (N,C,H,W)")
        if scores[0] != 1:
            raise self.shape_error(f"only a batch of 1 image is supported, got scores {format_shape(scores)}")
        if scores[1] != 2 * a or deltas[1] != 4 * a:
            raise self.shape_error(
                f"{a} anchors need 2x{a} score and 4x{a} delta channels, got {format_shape(scores)} and {format_shape(deltas)}")
        if scores[2:] != deltas[2:]:
            raise self.shape_error(f"scores {format_shape(scores)} and deltas {format_shape(deltas)} differ in height/width")
        r = self.lp.proposal_param.post_nms_topn
        return [(r, 5), (r, 1)]

    def summary(self) -> str:
        p = self.lp.proposal_param
        return f"{self.anchors} anchors, stride {p.feat_stride}, top {p.post_nms_topn}"


# ---------------------------------------------------------------------------------------------
# Caffe's Python layer


_YAML_TAG = re.compile(r"!![\w/:.]+")
_WORDS = {"true": True, "false": False, "yes": True, "no": False, "null": None, "none": None, "~": None}


def _split_top(text: str, seps: str, maxsplit: int = -1) -> list[str]:
    """Split at separators outside quotes and brackets."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch in seps and depth == 0 and (maxsplit < 0 or len(parts) < maxsplit):
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _value(text: str) -> object:
    t = text.strip()
    if t.lower() in _WORDS:
        return _WORDS[t.lower()]
    try:
        return ast.literal_eval(t)
    except (ValueError, SyntaxError):
        return t.strip("'\"")


def parse_param_str(text: str) -> dict[str, object]:
    """A Python layer's ``param_str`` as a dict: YAML flow/block mappings or a Python dict literal.

    Tolerant: ``'feat_stride': 16``, ``{'num_classes': 21}``, ``'scales': !!python/tuple [8, 16]``,
    one ``key: value`` per line. Raises ValueError on an entry that is not ``key: value``.
    """
    s = _YAML_TAG.sub("", text).strip()
    if s.startswith("{") and s.endswith("}"):
        s = s[1:-1]
    out: dict[str, object] = {}
    for entry in _split_top(s, ",\n"):
        entry = entry.strip()
        if not entry or entry.startswith("#"):
            continue
        kv = _split_top(entry, ":", maxsplit=1)
        if len(kv) != 2:
            raise ValueError(f"entry {entry!r} is not 'key: value'")
        out[str(_value(kv[0]))] = _value(kv[1])
    return out


def _int_param(layer: PythonLayer, key: str) -> int:
    v = layer.params().get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise layer.error(f"param_str must set '{key}' to an integer for {layer.key}, got {v!r}")
    return v


def _seq_param(layer: PythonLayer, key: str, default: Sequence[float]) -> Sequence[float]:
    v = layer.params().get(key, default)
    if isinstance(v, (int, float)):
        return (v,)
    if not isinstance(v, (list, tuple)) or not v:
        raise layer.error(f"param_str '{key}' must be a list of numbers for {layer.key}, got {v!r}")
    return v


def _need_bottoms(layer: PythonLayer, bottoms: list[Shape], n: int, dims: int | None = 4) -> None:
    if len(bottoms) < n:
        raise layer.error(f"{layer.key} needs {n} bottom(s), got {len(bottoms)}")
    if dims is not None and len(bottoms[0]) != dims:
        raise layer.shape_error(f"{layer.key} expects a {dims}-D first bottom, got {format_shape(bottoms[0])}")


def _rpn_proposal(layer: PythonLayer, bottoms: list[Shape]) -> list[Shape | None]:
    # py-faster-rcnn lib/rpn/proposal_layer.py setup: rois (1, 5), optional scores (1, 1, 1, 1).
    return [(1, 5), (1, 1, 1, 1)]


def _rpn_anchor_target(layer: PythonLayer, bottoms: list[Shape]) -> list[Shape | None]:
    # lib/rpn/anchor_target_layer.py setup: A anchors (scales x the 3 fixed ratios) per cell of bottom 0.
    _need_bottoms(layer, bottoms, 1)
    a = len(_seq_param(layer, "scales", _DEFAULT_SCALES)) * len(_seq_param(layer, "ratios", _DEFAULT_RATIOS))
    h, w = bottoms[0][-2:]
    return [(1, 1, a * h, w), (1, 4 * a, h, w), (1, 4 * a, h, w), (1, 4 * a, h, w)]


def _rpn_proposal_target(layer: PythonLayer, bottoms: list[Shape]) -> list[Shape | None]:
    # py-faster-rcnn reshapes these to (1, 5), (1, 1), (1, 4K) x3; py-R-FCN (YuwenXiong) to 4-D
    # (1, 5, 1, 1), (1, 1, 1, 1), (1, 4K, 1, 1) x3. We take the 4-D form: R-CNN consumers read them
    # through num/channels/height/width (same either way) and R-FCN's OHEM Eltwise needs 4-D.
    k4 = 4 * _int_param(layer, "num_classes")
    return [(1, 5, 1, 1), (1, 1, 1, 1), (1, k4, 1, 1), (1, k4, 1, 1), (1, k4, 1, 1)]


def _roi_data(layer: PythonLayer, bottoms: list[Shape]) -> list[Shape | None]:
    # lib/roi_data_layer/layer.py setup: data (cfg.TRAIN.IMS_PER_BATCH, 3, max(SCALES), MAX_SIZE) depends
    # on the yml config, so it needs --input-shape. With 3 tops (cfg.TRAIN.HAS_RPN): im_info (1, 3),
    # gt_boxes (1, 4); otherwise rois (1, 5), labels (1,), then bbox targets/weights (1, 4K).
    n = len(layer.lp.top)
    if n == 3:
        return [None, (1, 3), (1, 4)]
    shapes: list[Shape | None] = [None, (1, 5), (1,)]
    if n > 3:
        k4 = 4 * _int_param(layer, "num_classes")
        shapes += [(1, k4)] * (n - 3)
    return shapes


def _color_like(channels: int | None) -> Callable[[PythonLayer, list[Shape]], list[Shape | None]]:
    # richzhang/colorization resources/caffe_traininglayers.py: (N, channels, H, W) from bottom 0.
    def f(layer: PythonLayer, bottoms: list[Shape]) -> list[Shape | None]:
        _need_bottoms(layer, bottoms, 1)
        b = bottoms[0]
        return [(b[0], channels if channels is not None else b[1], b[2], b[3])]

    return f


def _bgr2lab(layer: PythonLayer, bottoms: list[Shape]) -> list[Shape | None]:
    _need_bottoms(layer, bottoms, 1)
    if bottoms[0][1] != 3:
        raise layer.shape_error(f"{layer.key} expects a 3-channel BGR image, got {format_shape(bottoms[0])}")
    return _color_like(3)(layer, bottoms)


def _class_rebalance(layer: PythonLayer, bottoms: list[Shape]) -> list[Shape | None]:
    # ClassRebalanceMultLayer.reshape: top = bottom 0 for 1-, 2- or 4-D bottoms.
    _need_bottoms(layer, bottoms, 1, dims=None)
    if len(bottoms[0]) not in (1, 2, 4):
        raise layer.shape_error(f"{layer.key} takes a 1-, 2- or 4-D bottom, got {format_shape(bottoms[0])}")
    return [bottoms[0]]


def _pyloss_euclidean(layer: PythonLayer, bottoms: list[Shape]) -> list[Shape | None]:
    # Caffe's examples/pycaffe/layers/pyloss.py: equal counts, top reshaped to (1,).
    _need_bottoms(layer, bottoms, 2, dims=None)
    if count(bottoms[0]) != count(bottoms[1]):
        raise layer.shape_error(f"{layer.key} inputs {format_shape(bottoms[0])} and {format_shape(bottoms[1])} differ in count")
    return [(1,)]


#: Python layers whose setup()/reshape() top shapes follow from their bottoms and param_str.
#: Keys are "module.Class"; a module path is also matched by its last component.
_KNOWN_PYTHON: dict[str, Callable[[PythonLayer, list[Shape]], list[Shape | None]]] = {
    "rpn.proposal_layer.ProposalLayer": _rpn_proposal,
    "rpn.anchor_target_layer.AnchorTargetLayer": _rpn_anchor_target,
    "rpn.proposal_target_layer.ProposalTargetLayer": _rpn_proposal_target,
    "roi_data_layer.layer.RoIDataLayer": _roi_data,
    "caffe_traininglayers.BGR2LabLayer": _bgr2lab,
    "caffe_traininglayers.NNEncLayer": _color_like(313),  # Q = 313 points in resources/pts_in_hull.npy
    "caffe_traininglayers.PriorBoostLayer": _color_like(1),
    "caffe_traininglayers.NonGrayMaskLayer": _color_like(1),
    "caffe_traininglayers.ClassRebalanceMultLayer": _class_rebalance,
    "pyloss.EuclideanLossLayer": _pyloss_euclidean,
}
_ROI_DATA_EXAMPLE = "1,3,600,1000"  # py-faster-rcnn cfg: (IMS_PER_BATCH, 3, max(SCALES), MAX_SIZE), end2end yml


@register_layer("Python")
class PythonLayer(LayerDef):
    """Caffe's Python layer (``python_param.module``/``layer``): shapes from a table of known layers or --input-shape.

    Never imports the module. Without bottoms it is a data layer. No parameter blobs.
    Not translated: its forward is arbitrary Python code (as a data layer its tops are graph inputs).
    """

    translatable = False

    bottoms = (0, None)
    tops = (0, None)

    def setup(self) -> None:
        p = self.lp.python_param
        if not p.module or not p.layer:
            raise self.error("python_param.module and python_param.layer are required")
        self.key = f"{p.module}.{p.layer}"
        self.is_data = not self.lp.bottom  # instance override of the class flag
        self.family = "data" if self.is_data else "other"
        self.rule = _KNOWN_PYTHON.get(self.key) or _KNOWN_PYTHON.get(f"{p.module.rsplit('.', 1)[-1]}.{p.layer}")
        self._params: dict[str, object] | None = None

    def params(self) -> dict[str, object]:
        if self._params is None:
            try:
                self._params = parse_param_str(self.lp.python_param.param_str)
            except ValueError as e:
                raise self.error(f"cannot read python_param.param_str {self.lp.python_param.param_str!r}: {e}") from None
        return self._params

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        derived: list[Shape | None] = []
        n = len(self.lp.top)
        # The table is consulted only when --input-shape leaves a top open.
        if self.rule is not None and any(t not in self.ctx.input_shapes for t in self.lp.top):
            derived = self.rule(self, bottoms)
            if len(derived) < n:
                raise self.error(f"{self.key} produces at most {len(derived)} top(s) but {n} are named")
        examples: list[str] = []
        if self.key.endswith("RoIDataLayer"):
            why = (f"Python layer {self.key} sizes its data top from the py-faster-rcnn yml config"
                   " (cfg.TRAIN.IMS_PER_BATCH, 3, max(SCALES), MAX_SIZE)")
            examples = [_ROI_DATA_EXAMPLE]
        elif self.is_data:
            why = f"Python layer {self.key} has no bottoms, so its top shapes are known only to its Python code"
        else:
            why = f"the top shapes of Python layer {self.key} are known only to its Python code"
        return _resolve_tops(self, derived, why, examples)

    def summary(self) -> str:
        return self.key


# ---------------------------------------------------------------------------------------------
# FlowNet, segmentation, SqueezeDet, colorization


@register_layer("Correlation")
class Correlation(LayerDef):
    """FlowNet correlation: ((2*(d/s2))+1)^2 channels, out = ceil((H + 2p - 2(d + (k-1)/2)) / s1)."""

    family = "conv"
    bottoms = (2, 2)

    def setup(self) -> None:
        p = self.lp.correlation_param
        if not p.HasField("kernel_size"):
            raise self.error("correlation_param.kernel_size is required")
        if not p.HasField("max_displacement"):
            raise self.error("correlation_param.max_displacement is required")
        if p.kernel_size % 2 == 0:
            raise self.error(f"kernel_size must be odd, got {p.kernel_size}")
        if p.stride_1 < 1 or p.stride_2 < 1:
            raise self.error(f"stride_1 and stride_2 must be >= 1, got {p.stride_1} and {p.stride_2}")
        self.k, self.d, self.pad = p.kernel_size, p.max_displacement, p.pad
        self.s1, self.s2 = p.stride_1, p.stride_2

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        a, b = bottoms
        if len(a) != 4 or a[1:] != b[1:]:
            raise self.shape_error(f"bottoms {format_shape(a)} and {format_shape(b)} must be 4-D with equal channels, height and width")
        border = self.d + (self.k - 1) // 2
        h = -(-(a[2] + 2 * self.pad - 2 * border) // self.s1)
        w = -(-(a[3] + 2 * self.pad - 2 * border) // self.s1)
        if h < 1 or w < 1:
            raise self.shape_error(
                f"displacement {self.d} and kernel {self.k} do not fit the padded {a[2] + 2 * self.pad}x{a[3] + 2 * self.pad} input")
        grid = 2 * (self.d // self.s2) + 1
        return [(a[0], grid * grid, h, w)]

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        n, taps = count(tops[0]), self.k * self.k * bottoms[0][1]
        if self.lp.correlation_param.correlation_type == caffe_pb2.CorrelationParameter.SUBTRACT:
            return Cost(0, 3 * n * taps + n)  # |a - b| summed, then normalised
        return Cost(n * taps, 2 * n * taps + n)

    def forward(self, e: Emit) -> None:
        p = self.lp.correlation_param
        if p.do_abs or p.single_direction:
            raise self.error("do_abs and single_direction are not supported (Correlation1D options)")
        ops.emit_correlation(e, e.bottoms[0], e.bottoms[1], p, e.tops[0])

    def summary(self) -> str:
        return f"d{self.d} k{self.k} s{self.s1}/{self.s2}" + (f" p{self.pad}" if self.pad else "")


@register_layer("SegAccuracy")
class SegAccuracy(LayerDef):
    """DeepLab/PSPNet pixel accuracy, mean class accuracy and mean IoU over a confusion matrix; top (1, 1, 1, 3)."""

    family = "loss"
    bottoms = (2, 2)
    tops = (1, None)  # one more top per output_label (the variant with per-class outputs)

    def setup(self) -> None:
        p = self.lp.seg_accuracy_param
        if p.output_label and len(self.lp.top) != len(p.output_label) + 1:
            raise self.error(f"{len(p.output_label)} output_label values need {len(p.output_label) + 1} tops, got {len(self.lp.top)}")

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        pred, label = bottoms
        if _legacy(self, pred, 0) != _legacy(self, label, 0):
            raise self.shape_error(f"scores {format_shape(pred)} and label {format_shape(label)} differ in batch size")
        c, h, w = _chw(self, label)
        if c != 1:
            raise self.shape_error(f"label {format_shape(label)} must have one channel")
        if (h, w) != (_legacy(self, pred, 2), _legacy(self, pred, 3)):
            raise self.shape_error(f"label {format_shape(label)} and scores {format_shape(pred)} differ in height/width")
        return [(1, 1, 1, 3)] * len(self.lp.top)

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        return Cost(0, count(bottoms[0]))

    def forward(self, e: Emit) -> None:
        p = self.lp.seg_accuracy_param
        ops.emit_seg_accuracy(e, list(p.ignore_label), list(p.output_label))


@register_layer("ImageSegData")
class ImageSegData(DataLayer):
    """DeepLab image + label-map list reader: data (N, C, crop, crop), label (N, 1, crop, crop), data_dim (N, 1, 1, 2)."""

    tops = (1, 3)

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        p = self.lp.image_data_param
        n, c = p.batch_size or 1, 3 if p.is_color else 1
        k = self.lp.transform_param.crop_size
        hw = (k, k) if k else (p.new_height, p.new_width) if p.new_height and p.new_width else None
        derived: list[Shape | None] = [(n, c, *hw), (n, 1, *hw)] if hw else [None, None]
        derived.append((n, 1, 1, 2))
        return _resolve_tops(self, derived, "no crop_size or new_height/new_width gives the image size (images are not read)",
                             [f"{n},{c},H,W", f"{n},1,H,W"])

    def summary(self) -> str:
        return f"batch {self.lp.image_data_param.batch_size or 1}"


@register_layer("BboxData")
class BboxData(DataLayer):
    """SqueezeDet image + box list reader: data (batch, C, H, W); label (5*boxes + 1, 1, 1, 1), one box assumed."""

    tops = (1, 2)

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        p = self.lp.bbox_data_param
        n, c = p.batch_size or 1, 3 if p.is_color else 1
        k = self.lp.transform_param.crop_size
        hw = (k, k) if k else (p.new_height, p.new_width) if p.new_height and p.new_width else None
        # Caffe sizes the label from the boxes of the first image; unknown here, we assume one box.
        derived: list[Shape | None] = [(n, c, *hw) if hw else None, (6, 1, 1, 1)]
        return _resolve_tops(self, derived, "no crop_size or new_height/new_width gives the image size (images are not read)",
                             [f"{n},{c},H,W"])

    def summary(self) -> str:
        return f"batch {self.lp.bbox_data_param.batch_size or 1}"


@register_layer("SqueezeDetLoss")
class SqueezeDetLoss(LossLayer):
    """SqueezeDet loss: class softmax + confidence sigmoid + box regression against the box list; scalar.

    Not translated: a training loss that matches anchors to a variable box list in C++.
    """

    family = "loss"
    translatable = False
    bottoms = (4, 4)  # class scores, confidences, box deltas, boxes

    def setup(self) -> None:
        p = self.lp.squeezedet_param
        for f in ("classes", "anchors_per_grid"):
            if not p.HasField(f) or getattr(p, f) < 1:
                raise self.error(f"squeezedet_param.{f} must be >= 1, got {getattr(p, f)}")
        if p.anchor_shapes and len(p.anchor_shapes) != 2 * p.anchors_per_grid:
            raise self.error(
                f"{len(p.anchor_shapes)} anchor_shapes values for {p.anchors_per_grid} anchors (need width, height pairs)")

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        return Cost(0, 5 * (count(bottoms[0]) + count(bottoms[1]) + count(bottoms[2])))

    def summary(self) -> str:
        p = self.lp.squeezedet_param
        return f"{p.classes} classes, {p.anchors_per_grid} anchors"


@register_layer("SoftmaxCrossEntropyLoss")
class SoftmaxCrossEntropyLoss(LossLayer):
    """Colorization loss: -sum target * log softmax(x) with soft targets of the same count; scalar.

    Not translated: the forks disagree on its normaliser (N or N*H*W) and the colorization fork's
    source is not at hand to pin it.
    """

    family = "loss"
    translatable = False

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        if count(bottoms[0]) != count(bottoms[1]):
            raise self.shape_error(f"scores {format_shape(bottoms[0])} and targets {format_shape(bottoms[1])} differ in count")
        return [()]

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        return Cost(0, 5 * count(bottoms[0]))
