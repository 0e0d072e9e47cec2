"""ONNX emission for the detection-family forwards of :mod:`dnntool.layers.detection`.

Each function reproduces one fork's C++/CUDA loop with standard ONNX ops (opset 17); the layer
classes keep their parameters and shapes and call these. Comments name the Caffe source followed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from dnntool.layers.base import Emit
from dnntool.proto import caffe_pb2

_FLOAT, _DOUBLE, _INT64 = 1, 11, 7  # TensorProto element types


# ---------------------------------------------------------------------------------------------
# SSD PriorBox (weiliu89/caffe prior_box_layer.cpp; OpenCV's width/height and offset_h/offset_w)


def prior_boxes(p: caffe_pb2.PriorBoxParameter, ratios: Sequence[float], feat_hw: tuple[int, int],
                image_hw: tuple[int, int]) -> np.ndarray:
    """The PriorBox top (1, 2, H*W*P*4): [xmin, ymin, xmax, ymax] / image size, then the variances.

    Per cell (row-major), per box: for each min_size, the min box, sqrt(min*max), then min*sqrt(r) x
    min/sqrt(r) for each ratio r != 1. SSD truncates min_size and max_size to int
    (``int min_size_ = min_sizes_[s]``); centres are float, corners are computed in double.
    """
    f32 = np.float32
    lh, lw = feat_hw
    ih, iw = (p.img_h, p.img_w) if (p.HasField("img_h") or p.HasField("img_w")) else (
        (p.img_size, p.img_size) if p.HasField("img_size") else (0, 0))
    if not ih or not iw:
        ih, iw = image_hw
    if p.HasField("step_h") or p.HasField("step_w"):
        sh, sw = f32(p.step_h), f32(p.step_w)
    elif p.HasField("step"):
        sh = sw = f32(p.step)
    else:
        sh, sw = f32(ih) / f32(lh), f32(iw) / f32(lw)
    if p.width:  # OpenCV's explicit sizes (floats)
        sizes = [(f32(w), f32(h)) for w, h in zip(p.width, p.height, strict=True)]
    else:
        sizes = []
        for s, m in enumerate(p.min_size):
            lo = int(m)
            sizes.append((f32(lo), f32(lo)))
            if p.max_size:
                side = f32(math.sqrt(lo * int(p.max_size[s])))
                sizes.append((side, side))
            for r in ratios:
                if abs(r - 1.0) < 1e-6:
                    continue
                root = math.sqrt(float(f32(r)))
                sizes.append((f32(lo * root), f32(lo / root)))
    offx = np.asarray(p.offset_w if p.offset_h else [p.offset], f32)
    offy = np.asarray(p.offset_h if p.offset_h else [p.offset], f32)
    cx = (np.arange(lw, dtype=f32)[None, :, None, None] + offx) * sw  # (1, W, 1, O) float math
    cy = (np.arange(lh, dtype=f32)[:, None, None, None] + offy) * sh  # (H, 1, 1, O)
    bw = np.asarray([s[0] for s in sizes], f32)[None, None, :, None].astype(np.float64) / 2.0
    bh = np.asarray([s[1] for s in sizes], f32)[None, None, :, None].astype(np.float64) / 2.0
    cx, cy = np.broadcast_arrays(cx.astype(np.float64), cy.astype(np.float64))
    corners = np.stack(np.broadcast_arrays((cx - bw) / iw, (cy - bh) / ih, (cx + bw) / iw, (cy + bh) / ih),
                       axis=-1)  # (H, W, P, O, 4): per cell, per box, per offset
    boxes = corners.astype(f32).reshape(-1)
    if p.clip:
        boxes = np.clip(boxes, 0.0, 1.0)
    var = list(p.variance) or [0.1]
    variances = np.resize(np.asarray(var, f32), boxes.size)
    return np.stack([boxes, variances])[None]


# ---------------------------------------------------------------------------------------------
# Fast R-CNN ROIPooling, R-FCN PSROIPooling


def emit_roi_max_pool(e: Emit, x: str, rois: str, pooled: tuple[int, int], scale: float, out: str) -> None:
    """Caffe's roi_pooling_layer.cpp through ONNX MaxRoiPool, which has the same bins (round() of
    the scaled corners, floor/ceil bin edges, clipping, 0 for an empty bin) but starts each max at
    FLT_MIN instead of -FLT_MAX, so a bin whose max is <= 0 would read FLT_MIN. Those bins are
    recovered from a second pool over 1/|min(x, 0)|, whose largest value is the value nearest 0."""
    g = e.g
    attrs = {"pooled_shape": list(pooled), "spatial_scale": float(scale)}
    zero = g.scalar(0.0)
    a = g.op1("MaxRoiPool", [x, rois], **attrs)
    inv = g.op1("Reciprocal", [g.op1("Abs", [g.op1("Min", [x, zero])])])  # 1/|x| for x <= 0, inf at 0
    b = g.op1("MaxRoiPool", [inv, rois], **attrs)  # 0 only for an empty bin
    nonpos = g.op1("Where", [g.op1("Greater", [b, zero]), g.op1("Neg", [g.op1("Reciprocal", [b])]), zero])
    g.op("Where", [g.op1("Greater", [a, g.scalar(float(np.finfo(np.float32).tiny))]), a, nonpos], [out])


def _cround(e: Emit, v: str) -> str:
    """C's round(): halves away from zero (ONNX Round goes to even), in double."""
    g = e.g
    vd = g.op1("Cast", [v], to=_DOUBLE)
    half = g.const(0.5, dtype=np.float64)
    r = g.op1("Mul", [g.op1("Sign", [vd]), g.op1("Floor", [g.op1("Add", [g.op1("Abs", [vd]), half])])])
    return g.op1("Cast", [r], to=_FLOAT)


def emit_psroi_pool(e: Emit, x: str, rois: str, shape: Sequence[int], dim: int, k: int, scale: float,
                    out: str) -> None:
    """R-FCN psroi_pooling_layer.cu: bin (i, j) of output channel d averages input channel
    (d*k + i)*k + j over [floor(i*bin + start), ceil((i+1)*bin + start)) clipped to the map, with
    start = round(x1)*scale, end = (round(x2) + 1)*scale, size max(end - start, 0.1); empty bins 0.
    Box sums come from a double-precision integral image, so each bin is four lookups."""
    g = e.g
    _, c, h, w = shape
    col = [g.op1("Slice", [rois, g.const([i]), g.const([i + 1]), g.const([1])]) for i in range(5)]  # (R, 1)
    s = g.scalar(scale)
    one = g.scalar(1.0)
    x0, y0 = (g.op1("Mul", [_cround(e, col[i]), s]) for i in (1, 2))
    x1, y1 = (g.op1("Mul", [g.op1("Add", [_cround(e, col[i]), one]), s]) for i in (3, 4))

    def edges(lo: str, hi: str, limit: int) -> tuple[str, str]:
        size = g.op1("Max", [g.op1("Sub", [hi, lo]), g.scalar(0.1)])
        step = g.op1("Div", [size, g.scalar(float(k))])
        at = g.const(np.arange(k, dtype=g.dtype)[None])
        start = g.op1("Floor", [g.op1("Add", [g.op1("Mul", [at, step]), lo])])
        end = g.op1("Ceil", [g.op1("Add", [g.op1("Mul", [g.op1("Add", [at, one]), step]), lo])])
        return tuple(g.op1("Cast", [g.op1("Clip", [v, g.scalar(0.0), g.scalar(float(limit))])], to=_INT64)
                     for v in (start, end))  # (R, k) each

    hs, he = (g.reshape(v, [-1, 1, k, 1]) for v in edges(y0, y1, h))
    ws, we = (g.reshape(v, [-1, 1, 1, k]) for v in edges(x0, x1, w))
    integral = g.op1("CumSum", [g.op1("CumSum", [g.op1("Cast", [x], to=_DOUBLE), g.const(2)]), g.const(3)])
    integral = g.op1("Pad", [integral, g.const(np.asarray([0, 0, 1, 1, 0, 0, 0, 0], np.int64))])
    flat = g.reshape(integral, [-1])
    plane = (h + 1) * (w + 1)
    chan = (np.arange(dim)[:, None, None] * k + np.arange(k)[None, :, None]) * k + np.arange(k)[None, None, :]
    batch = g.reshape(g.op1("Cast", [col[0]], to=_INT64), [-1, 1, 1, 1])
    base = g.op1("Add", [g.op1("Mul", [batch, g.const(np.asarray(c * plane, np.int64))]),
                         g.const((chan * plane)[None].astype(np.int64))])  # (R, dim, k, k)
    wide = g.const(np.asarray(w + 1, np.int64))

    def corner(hh: str, ww: str) -> str:
        return g.op1("Gather", [flat, g.op1("Add", [g.op1("Add", [base, g.op1("Mul", [hh, wide])]), ww])])

    total = g.op1("Add", [g.op1("Sub", [g.op1("Sub", [corner(he, we), corner(hs, we)]), corner(he, ws)]),
                          corner(hs, ws)])
    dh, dw = g.op1("Sub", [he, hs]), g.op1("Sub", [we, ws])
    zero_i = g.const(np.asarray(0, np.int64))
    empty = g.op1("Or", [g.op1("LessOrEqual", [dh, zero_i]), g.op1("LessOrEqual", [dw, zero_i])])
    area = g.op1("Cast", [g.op1("Max", [g.op1("Mul", [dh, dw]), g.const(np.asarray(1, np.int64))])], to=_DOUBLE)
    avg = g.op1("Where", [empty, g.const(0.0, dtype=np.float64), g.op1("Div", [total, area])])
    g.op("Cast", [avg], [out], to=_FLOAT)


# ---------------------------------------------------------------------------------------------
# FlowNet Correlation


def emit_correlation(e: Emit, a: str, b: str, p: caffe_pb2.CorrelationParameter, out: str) -> None:
    """FlowNet correlation_layer.cu (CorrelateData / CorrelateDataSubtract): top channel
    (p + r)*(2r + 1) + (o + r), r = max_displacement / stride_2, at (y, x) is the sum over a k x k
    window at (y*s1 + d, x*s1 + d) of the zero-padded inputs and all channels of a * b (or |a - b|)
    with b shifted by (p*s2, o*s2), divided by k*k*C. One Conv with a constant kernel per shift."""
    g = e.g
    _, c, _, _ = e.bottom_shapes[0]
    _, _, th, tw = e.top_shapes[0]
    k, d, s1, s2 = p.kernel_size, p.max_displacement, p.stride_1, p.stride_2
    if p.pad:
        pads = g.const(np.asarray([0, 0, p.pad, p.pad, 0, 0, p.pad, p.pad], np.int64))
        a, b = g.op1("Pad", [a, pads]), g.op1("Pad", [b, pads])
    hs, ws = (th - 1) * s1 + k, (tw - 1) * s1 + k
    axes = g.const([2, 3])
    win = g.op1("Slice", [a, g.const([d, d]), g.const([d + hs, d + ws]), axes])
    kern = g.const(np.full((1, c, k, k), 1.0 / (k * k * c), g.dtype))
    r = d // s2
    subtract = p.correlation_type == caffe_pb2.CorrelationParameter.SUBTRACT
    parts = []
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            oy, ox = d + dy * s2, d + dx * s2
            moved = g.op1("Slice", [b, g.const([oy, ox]), g.const([oy + hs, ox + ws]), axes])
            prod = g.op1("Abs", [g.op1("Sub", [win, moved])]) if subtract else g.op1("Mul", [win, moved])
            parts.append(g.op1("Conv", [prod, kern], kernel_shape=[k, k], strides=[s1, s1]))
    g.op("Concat", parts, [out], axis=1)


# ---------------------------------------------------------------------------------------------
# DeepLab/PSPNet SegAccuracy


def emit_seg_accuracy(e: Emit, ignore: Sequence[int], output_label: Sequence[int]) -> None:
    """seg_accuracy_layer.cpp with DeepLab's ConfusionMatrix, cleared at every forward: rows are
    ground truth (ignored labels skipped), columns the argmax (first maximum; score > 0.5 for one
    channel). Top 0: accuracy (0 if empty), mean recall over classes present, mean Jaccard over all
    classes (1 where intersection == union); top i: precision, recall, Jaccard of output_label i."""
    g = e.g
    pred = e.bottom_shapes[0]
    c = pred[1] if len(pred) > 1 else 1
    k = c if c > 1 else 2
    x = e.bottoms[0]
    if c > 1:
        guess = g.op1("ArgMax", [x], axis=1, keepdims=0)
    else:
        guess = g.op1("Cast", [g.op1("Greater", [x, g.scalar(0.5)])], to=_INT64)
    guess = g.reshape(guess, [-1, 1])
    gt = g.reshape(g.op1("Cast", [e.bottoms[1]], to=_INT64), [-1, 1])
    classes = g.const(np.arange(k, dtype=np.int64)[None])
    keep = g.op1("And", [g.op1("GreaterOrEqual", [gt, g.const(np.asarray(0, np.int64))]),
                         g.op1("Less", [gt, g.const(np.asarray(k, np.int64))])])
    for lab in ignore:
        keep = g.op1("And", [keep, g.op1("Not", [g.op1("Equal", [gt, g.const(np.asarray(lab, np.int64))])])])
    rows_gt = g.op1("Cast", [g.op1("And", [g.op1("Equal", [gt, classes]), keep])], to=_FLOAT)
    cols_p = g.op1("Cast", [g.op1("Equal", [guess, classes])], to=_FLOAT)
    conf = g.op1("Cast", [g.op1("MatMul", [g.op1("Transpose", [rows_gt]), cols_p])], to=_DOUBLE)  # (K, K)
    dbl = lambda v: g.const(v, dtype=np.float64)  # noqa: E731
    diag = g.op1("ReduceSum", [g.op1("Mul", [conf, dbl(np.eye(k))]), g.const([1])], keepdims=0)
    rows = g.op1("ReduceSum", [conf, g.const([1])], keepdims=0)
    cols = g.op1("ReduceSum", [conf, g.const([0])], keepdims=0)
    total, hits = (g.op1("ReduceSum", [v], keepdims=1) for v in (rows, diag))
    acc = g.op1("Where", [g.op1("Equal", [total, dbl(0.0)]), dbl(0.0), g.op1("Div", [hits, total])])
    present = g.op1("Greater", [rows, dbl(0.0)])
    n_present = g.op1("ReduceSum", [g.op1("Cast", [present], to=_DOUBLE)], keepdims=1)
    recall_sum = g.op1("ReduceSum", [g.op1("Where", [present, g.op1("Div", [diag, rows]), dbl(0.0)])], keepdims=1)
    avg_recall = g.op1("Where", [g.op1("Equal", [n_present, dbl(0.0)]), dbl(0.0),
                                 g.op1("Div", [recall_sum, n_present])])
    union = g.op1("Sub", [g.op1("Add", [rows, cols]), diag])
    jac = g.op1("Where", [g.op1("Equal", [diag, union]), dbl(1.0), g.op1("Div", [diag, union])])
    avg_jac = g.op1("ReduceMean", [jac], keepdims=1)

    def top(values: list[str], name: str) -> None:
        row = g.op1("Cast", [g.op1("Concat", values, axis=0)], to=_FLOAT)
        g.reshape(row, [1, 1, 1, 3], name)

    top([acc, avg_recall, avg_jac], e.tops[0])
    for i, n in enumerate(output_label):
        pick = [g.op1("Slice", [v, g.const([n]), g.const([n + 1])]) for v in (diag, cols, rows, jac)]
        top([g.op1("Div", [pick[0], pick[1]]), g.op1("Div", [pick[0], pick[2]]), pick[3]], e.tops[i + 1])


# ---------------------------------------------------------------------------------------------
# Fast R-CNN / R-FCN smooth L1


def smooth_l1(e: Emit, d: str, sigma2: float) -> str:
    """rbg's SmoothL1Forward: 0.5 * sigma^2 * d^2 where |d| < 1/sigma^2, else |d| - 0.5/sigma^2."""
    g = e.g
    ad = g.op1("Abs", [d])
    quad = g.op1("Mul", [g.op1("Mul", [g.op1("Mul", [d, g.scalar(0.5)]), d]), g.scalar(sigma2)])
    lin = g.op1("Sub", [ad, g.scalar(0.5 / sigma2)])
    return g.op1("Where", [g.op1("Less", [ad, g.scalar(1.0 / sigma2)]), quad, lin])


def rfcn_normalizer(lp: caffe_pb2.LossParameter, outer: int, inner: int) -> tuple[float, bool]:
    """R-FCN's get_normalizer for its smooth L1 layers (FULL and VALID are N*H*W), >= 1, and
    whether it grows with the batch (not for NONE and PRE_FIXED)."""
    nm = caffe_pb2.LossParameter
    mode = lp.normalization
    if not lp.HasField("normalization") and lp.HasField("normalize"):
        mode = nm.VALID if lp.normalize else nm.BATCH_SIZE
    n = {nm.FULL: outer * inner, nm.VALID: outer * inner, nm.BATCH_SIZE: outer, nm.NONE: 1,
         nm.PRE_FIXED: lp.pre_fixed_normalizer}.get(mode, 1)
    return max(1.0, float(n)), mode in (nm.FULL, nm.VALID, nm.BATCH_SIZE)
