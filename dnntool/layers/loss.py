"""Losses and metrics. Loss layers weigh their first top by 1 unless ``loss_weight`` says otherwise."""

from __future__ import annotations

from dnntool.layers.base import BackEmit, Cost, Emit, LayerDef, LossLayer, Shape, count, count_range
from dnntool.layers.registry import register_layer
from dnntool.proto import caffe_pb2


def batch_count(e: Emit, x: str, value: float) -> str:
    """``value``, a count proportional to the batch of bottom ``x``, as a scalar tensor: a constant,
    or scaled by x's runtime dim 0 when the batch is dynamic (static shapes hold batch N)."""
    g = e.g
    n0 = e.bottom_shapes[e.bottoms.index(x)][0] if e.bottom_shapes[e.bottoms.index(x)] else 0
    if e.batch is None or not n0:
        return g.scalar(float(value))
    from dnntool.onnxgraph.builder import onnx_dtype

    n = g.op1("Cast", [g.op1("Gather", [g.op1("Shape", [x]), g.const(0)])], to=onnx_dtype(g.dtype))
    return g.op1("Mul", [n, g.scalar(value / n0)])


def _normalizer(layer: LayerDef, e: Emit, valid: str | None, outer: int, inner: int,
                batch_of: str | None = None) -> str:
    """Caffe's LossLayer normaliser (VALID default; legacy ``normalize: false`` is BATCH_SIZE), >= 1."""
    p = layer.lp.loss_param
    NM = caffe_pb2.LossParameter
    mode = p.normalization
    if not p.HasField("normalization") and p.HasField("normalize"):
        mode = NM.VALID if p.normalize else NM.BATCH_SIZE
    if mode == NM.VALID and valid is not None:
        return e.g.op1("Max", [valid, e.g.scalar(1.0)])
    n = {NM.FULL: outer * inner, NM.VALID: outer * inner, NM.BATCH_SIZE: outer, NM.NONE: 1}.get(mode, 1)
    if batch_of is not None and e.batch is not None and mode != NM.NONE:  # N is only known at run time
        return e.g.op1("Max", [batch_count(e, batch_of, n), e.g.scalar(1.0)])
    return e.g.scalar(float(max(1, n)))


def _class_rows(e: Emit, x: str, shape, ax: int) -> str:
    """Scores (outer, C, inner...) as rows (outer*inner, C): classes last."""
    nd = len(shape)
    if ax == nd - 1:
        return e.g.reshape(x, [-1, shape[ax]])
    perm = [*range(ax), *range(ax + 1, nd), ax]
    return e.g.reshape(e.g.op1("Transpose", [x], perm=perm), [-1, shape[ax]])


def _rows_back(b: BackEmit, rows: str, shape, ax: int) -> str:
    """Inverse of :func:`_class_rows`: (outer*inner, C) back to the prediction layout."""
    g = b.g
    nd = len(shape)
    moved = [*shape[:ax], *shape[ax + 1:], shape[ax]]
    y = g.reshape(rows, moved)
    if ax == nd - 1:
        return y
    inv = [*range(ax), nd - 1, *range(ax, nd - 1)]
    return g.op1("Transpose", [y], perm=inv)


def _labels(e: Emit, label: str, ignore: int | None) -> tuple[str, str | None]:
    """Labels as an int64 column (M, 1) with ignored entries set to 0, and a float valid mask (M, 1)."""
    g = e.g
    lab = g.reshape(g.op1("Cast", [label], to=7), [-1, 1])
    if ignore is None:
        return lab, None
    keep = g.op1("Not", [g.op1("Equal", [lab, g.const([[ignore]])])])
    return g.op1("Where", [keep, lab, g.const([[0]])]), g.op1("Cast", [keep], to=1)


def _label_check(layer: LayerDef, pred: Shape, label: Shape, axis: int) -> tuple[int, int]:
    """Caffe's check that the label has outer x inner values for predictions with classes on ``axis``."""
    ax = layer.canonical_axis(axis, len(pred))
    outer, inner = count_range(pred, 0, ax), count_range(pred, ax + 1)
    if count(label) != outer * inner:
        raise layer.shape_error(
            f"label {list(label)} has {count(label)} values but predictions {list(pred)} with classes on"
            f" axis {ax} need {outer * inner} (N*H*W)"
        )
    return outer, inner


def _same_num(layer: LayerDef, bottoms: list[Shape]) -> None:
    """Caffe's ``LossLayer::Reshape``: "The data and label should have the same first dimension."."""
    a, b = bottoms[0], bottoms[1]
    if a and b and a[0] != b[0]:
        raise layer.shape_error(
            f"bottoms {list(a)} and {list(b)} must have the same first dimension (the batch)"
        )


@register_layer("SoftmaxWithLoss")
class SoftmaxWithLoss(LossLayer):
    """-log softmax(x)[label] over ``softmax_param.axis``, normalised (VALID by default); top 1 = probabilities."""

    tops = (1, 2)

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        _same_num(self, bottoms)
        _label_check(self, bottoms[0], bottoms[1], self.lp.softmax_param.axis)
        return [(), bottoms[0]]

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        return Cost(0, 5 * count(bottoms[0]))

    def forward(self, e: Emit) -> None:
        """-log(max(p[label], FLT_MIN)) summed over non-ignored positions / the normaliser."""
        g = e.g
        pred = e.bottom_shapes[0]
        ax = self.canonical_axis(self.lp.softmax_param.axis, len(pred))
        prob = g.op1("Softmax", [e.bottoms[0]], e.tops[1] if len(e.tops) > 1 else None, axis=ax)
        rows = _class_rows(e, prob, pred, ax)
        lp = self.lp.loss_param
        lab, valid = _labels(e, e.bottoms[1], lp.ignore_label if lp.HasField("ignore_label") else None)
        p_true = g.op1("GatherElements", [rows, lab], axis=1)
        nll = g.op1("Neg", [g.op1("Log", [g.op1("Max", [p_true, g.scalar(1.1754944e-38)])])])
        if valid is not None:
            nll = g.op1("Mul", [nll, valid])
        total = g.op1("ReduceSum", [nll], keepdims=0)
        count_valid = g.op1("ReduceSum", [valid], keepdims=0) if valid is not None else None
        outer, inner = count_range(pred, 0, ax), count_range(pred, ax + 1)
        norm = _normalizer(self, e, count_valid, outer, inner, e.bottoms[0] if ax > 0 else None)
        g.op("Div", [total, norm], e.tops[:1])
        e.extra.update(rows=rows, lab=lab, valid=valid, norm=norm, axis=ax, nll=nll)

    def backward(self, b: BackEmit) -> list[str | None] | None:
        """Fused: d(pred) = (p - onehot(label)) x valid x dloss / normaliser, as Caffe's layer.

        The composed rules would route the gradient through Log/Max/GatherElements/Softmax, slower
        and clamped near p = 0; Caffe's closed form is exact and is what Caffe computes.
        """
        g, x = b.g, b.extra
        dloss = b.top_grads[0]
        if dloss is None or not b.need[0]:
            return [None, None]
        pred = b.bottom_shapes[0]
        c = pred[x["axis"]]
        onehot = g.op1("Cast", [g.op1("Equal", [x["lab"], g.const([list(range(c))])])], to=1)
        d = g.op1("Sub", [x["rows"], onehot])
        if x["valid"] is not None:
            d = g.op1("Mul", [d, x["valid"]])
        d = g.op1("Mul", [d, g.op1("Div", [dloss, x["norm"]])])
        return [_rows_back(b, d, pred, x["axis"]), None]


@register_layer("EuclideanLoss")
class EuclideanLoss(LossLayer):
    """sum((a - b)^2) / (2N)."""

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        a, b = bottoms
        _same_num(self, bottoms)
        if count(a) != count(b) or count_range(a, 1) != count_range(b, 1):
            raise self.shape_error(f"bottoms {list(a)} and {list(b)} must have the same dimensions")
        return [()]

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        n = count(bottoms[0])
        return Cost(n, 3 * n)

    def forward(self, e: Emit) -> None:
        g = e.g
        a = g.reshape(e.bottoms[0], [-1])
        b = g.reshape(e.bottoms[1], [-1])
        d = g.op1("Sub", [a, b])
        ss = g.op1("ReduceSum", [g.op1("Mul", [d, d])], keepdims=0)
        g.op("Div", [ss, batch_count(e, e.bottoms[0], 2.0 * e.bottom_shapes[0][0])], e.tops)


@register_layer("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLoss(LossLayer):
    """Cross entropy of sigmoid(x) against targets in [0, 1] of the same count."""

    tops = (1, 1)

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        _same_num(self, bottoms)
        if count(bottoms[0]) != count(bottoms[1]):
            raise self.shape_error(f"bottoms {list(bottoms[0])} and {list(bottoms[1])} must have the same count")
        return [()]

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        return Cost(0, 6 * count(bottoms[0]))

    def forward(self, e: Emit) -> None:
        """-sum(x (t - [x >= 0]) - log(1 + exp(x - 2x [x >= 0]))) / normaliser (Caffe's stable form)."""
        g = e.g
        x = g.reshape(e.bottoms[0], [-1])
        t = g.reshape(e.bottoms[1], [-1])
        pos = g.op1("Cast", [g.op1("GreaterOrEqual", [x, g.scalar(0.0)])], to=1)
        lin = g.op1("Mul", [x, g.op1("Sub", [t, pos])])
        soft = g.op1("Softplus", [g.op1("Sub", [x, g.op1("Mul", [g.op1("Mul", [x, pos]), g.scalar(2.0)])])])
        term = g.op1("Sub", [lin, soft])
        lp = self.lp.loss_param
        valid = None
        if lp.HasField("ignore_label"):
            keep = g.op1("Cast", [g.op1("Not", [g.op1("Equal", [t, g.scalar(float(lp.ignore_label))])])], to=1)
            term = g.op1("Mul", [term, keep])
            valid = g.op1("ReduceSum", [keep], keepdims=0)
        total = g.op1("Neg", [g.op1("ReduceSum", [term], keepdims=0)])
        shape = e.bottom_shapes[0]
        g.op("Div", [total, _normalizer(self, e, valid, shape[0], count_range(shape, 1), e.bottoms[0])], e.tops)


@register_layer("ContrastiveLoss")
class ContrastiveLoss(LossLayer):
    """Siamese loss on feature pairs (a, b) and similarity y: y d^2 + (1-y) max(margin - d, 0)^2, / 2N."""

    bottoms = (3, 3)

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        a, b, y = bottoms
        if a != b:
            raise self.shape_error(f"feature bottoms {list(a)} and {list(b)} must match")
        if len(a) < 2 or len(a) > 4 or count_range(a, 2) != 1:  # Caffe: height() == width() == 1
            raise self.shape_error(f"feature bottoms must be (N, C) or (N, C, 1, 1), got {list(a)}")
        if count(y) != a[0]:
            raise self.shape_error(f"similarity bottom {list(y)} needs {a[0]} values (one per pair)")
        return [()]

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        n = count(bottoms[0])
        return Cost(n, 3 * n)

    def forward(self, e: Emit) -> None:
        """sum(y d^2 + (1 - y) max(margin - d, 0)^2) / 2N (legacy_version: max(margin - d^2, 0))."""
        g = e.g
        p = self.lp.contrastive_loss_param
        n, c = e.bottom_shapes[0][0], count_range(e.bottom_shapes[0], 1)
        d = g.op1("Sub", [g.reshape(e.bottoms[0], [-1, c]), g.reshape(e.bottoms[1], [-1, c])])
        d2 = g.op1("ReduceSum", [g.op1("Mul", [d, d]), g.const([1])], keepdims=0)
        y = g.reshape(e.bottoms[2], [-1])
        if p.legacy_version:
            far = g.op1("Relu", [g.op1("Sub", [g.scalar(p.margin), d2])])
        else:
            m = g.op1("Relu", [g.op1("Sub", [g.scalar(p.margin), g.op1("Sqrt", [d2])])])
            far = g.op1("Mul", [m, m])
        sim = g.op1("Cast", [g.op1("Cast", [y], to=9)], to=1)  # Caffe: static_cast<int>(y) != 0
        terms = g.op1("Add", [g.op1("Mul", [sim, d2]), g.op1("Mul", [g.op1("Sub", [g.scalar(1.0), sim]), far])])
        g.op("Div", [g.op1("ReduceSum", [terms], keepdims=0), batch_count(e, e.bottoms[0], 2.0 * n)], e.tops)


@register_layer("HingeLoss")
class HingeLoss(LossLayer):
    """One-vs-all hinge loss (L1 or L2) of scores against integer labels."""

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        _same_num(self, bottoms)
        if count(bottoms[1]) != bottoms[0][0]:
            raise self.shape_error(f"label {list(bottoms[1])} needs {bottoms[0][0]} values (one per sample)")
        return [()]

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        return Cost(0, 3 * count(bottoms[0]))

    def forward(self, e: Emit) -> None:
        """sum over samples and classes of max(0, 1 - s x), s = +1 for the label, -1 otherwise; / N."""
        g = e.g
        pred = e.bottom_shapes[0]
        n, c = pred[0], count_range(pred, 1)
        x = g.reshape(e.bottoms[0], [-1, c])
        lab, _ = _labels(e, e.bottoms[1], None)
        onehot = g.op1("Cast", [g.op1("Equal", [lab, g.const([list(range(c))])])], to=1)
        sign = g.op1("Sub", [g.op1("Mul", [onehot, g.scalar(2.0)]), g.scalar(1.0)])
        margin = g.op1("Relu", [g.op1("Sub", [g.scalar(1.0), g.op1("Mul", [sign, x])])])
        if self.lp.hinge_loss_param.norm == caffe_pb2.HingeLossParameter.L2:
            margin = g.op1("Mul", [margin, margin])
        g.op("Div", [g.op1("ReduceSum", [margin], keepdims=0), batch_count(e, e.bottoms[0], n)], e.tops)


@register_layer("MultinomialLogisticLoss")
class MultinomialLogisticLoss(LossLayer):
    """-log(p[label]) / N for probabilities p."""

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        p, label = bottoms
        _same_num(self, bottoms)
        if count(label) != p[0]:
            raise self.shape_error(f"label {list(label)} needs {p[0]} values (one per sample)")
        return [()]

    def forward(self, e: Emit) -> None:
        g = e.g
        pred = e.bottom_shapes[0]
        rows = g.reshape(e.bottoms[0], [-1, count_range(pred, 1)])
        lab, _ = _labels(e, e.bottoms[1], None)
        p = g.op1("Max", [g.op1("GatherElements", [rows, lab], axis=1), g.scalar(1e-20)])
        total = g.op1("ReduceSum", [g.op1("Log", [p])], keepdims=0)
        g.op("Div", [g.op1("Neg", [total]), batch_count(e, e.bottoms[0], pred[0])], e.tops)


@register_layer("InfogainLoss")
class InfogainLoss(LossLayer):
    """-sum_k H[label, k] log(p_k), with the infogain matrix H from a file or a third bottom."""

    bottoms = (2, 3)
    tops = (1, 2)

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        _same_num(self, bottoms)
        axis = self.lp.infogain_loss_param.axis
        _label_check(self, bottoms[0], bottoms[1], axis)
        if len(bottoms) == 3:  # Caffe: CHECK_EQ(infogain->count(), num_labels_*num_labels_)
            k = bottoms[0][self.canonical_axis(axis, len(bottoms[0]))]
            if count(bottoms[2]) != k * k:
                raise self.shape_error(f"infogain matrix {list(bottoms[2])} must hold {k}x{k} values")
        return [(), bottoms[0]]

    def infogain(self, e: Emit, k: int) -> str:
        """H (K, K): the third bottom, or the BlobProto file ``source`` read when translating."""
        import numpy as np

        if len(e.bottoms) == 3:
            return e.g.reshape(e.bottoms[2], [k, k])
        import os

        from dnntool.errors import FormatError
        from dnntool.io.blob import read_binaryproto

        src = self.lp.infogain_loss_param.source
        if not src:
            raise self.error("infogain_loss_param.source is required without a third bottom")
        path = src
        if not os.path.exists(path) and self.ctx.net_path and not os.path.isabs(src):
            path = os.path.join(os.path.dirname(os.path.abspath(self.ctx.net_path)), src)
        try:
            h = read_binaryproto(path)
        except FormatError as err:
            raise self.error(f"cannot read the infogain matrix '{src}': {err.message}") from None
        if h.size != k * k:
            raise self.shape_error(f"infogain matrix '{src}' holds {h.size} values, {k} classes need {k * k}")
        return e.g.const(np.asarray(h, e.g.dtype).reshape(k, k))

    def forward(self, e: Emit) -> None:
        """-sum_k H[label, k] log(max(p_k, 1e-20)) over non-ignored positions / the normaliser, with
        p = softmax over ``axis`` (BVLC infogain_loss_layer.cpp); top 1 = p."""
        g = e.g
        pred = e.bottom_shapes[0]
        ax = self.canonical_axis(self.lp.infogain_loss_param.axis, len(pred))
        k = pred[ax]
        prob = g.op1("Softmax", [e.bottoms[0]], e.tops[1] if len(e.tops) > 1 else None, axis=ax)
        rows = _class_rows(e, prob, pred, ax)
        lp = self.lp.loss_param
        lab, valid = _labels(e, e.bottoms[1], lp.ignore_label if lp.HasField("ignore_label") else None)
        h_rows = g.op1("Gather", [self.infogain(e, k), g.reshape(lab, [-1])], axis=0)
        logp = g.op1("Log", [g.op1("Max", [rows, g.scalar(1e-20)])])
        per = g.op1("ReduceSum", [g.op1("Mul", [h_rows, logp]), g.const([1])], keepdims=1)
        if valid is not None:
            per = g.op1("Mul", [per, valid])
        total = g.op1("Neg", [g.op1("ReduceSum", [per], keepdims=0)])
        count_valid = g.op1("ReduceSum", [valid], keepdims=0) if valid is not None else None
        outer, inner = count_range(pred, 0, ax), count_range(pred, ax + 1)
        g.op("Div", [total, _normalizer(self, e, count_valid, outer, inner, e.bottoms[0] if ax > 0 else None)],
             e.tops[:1])


@register_layer("Accuracy")
class Accuracy(LayerDef):
    """Fraction of samples whose label is among the top_k scores (ignore_label skipped); top 1: per class."""

    family = "loss"
    bottoms = (2, 2)
    tops = (1, 2)

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        p = self.lp.accuracy_param
        pred, label = bottoms
        _label_check(self, pred, label, p.axis)
        ax = self.canonical_axis(p.axis, len(pred))
        if p.top_k > pred[ax]:
            raise self.shape_error(f"top_k {p.top_k} exceeds the {pred[ax]} classes")
        return [(), (pred[ax],)]

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        return Cost(0, count(bottoms[0]))

    def summary(self) -> str:
        k = self.lp.accuracy_param.top_k
        return f"top-{k}" if k != 1 else ""

    def forward(self, e: Emit) -> None:
        """A sample is right when fewer than top_k scores are >= the label's score (Caffe's rule)."""
        g = e.g
        p = self.lp.accuracy_param
        pred = e.bottom_shapes[0]
        ax = self.canonical_axis(p.axis, len(pred))
        c = pred[ax]
        rows = _class_rows(e, e.bottoms[0], pred, ax)
        lab, valid = _labels(e, e.bottoms[1], p.ignore_label if p.HasField("ignore_label") else None)
        s_true = g.op1("GatherElements", [rows, lab], axis=1)
        better = g.op1("ReduceSum", [g.op1("Cast", [g.op1("GreaterOrEqual", [rows, s_true])], to=1),
                                     g.const([1])], keepdims=1)
        right = g.op1("Cast", [g.op1("LessOrEqual", [better, g.scalar(float(p.top_k))])], to=1)
        if valid is not None:
            right = g.op1("Mul", [right, valid])
            n = g.op1("Max", [g.op1("ReduceSum", [valid], keepdims=0), g.scalar(1.0)])
        else:
            n = batch_count(e, e.bottoms[0], count_range(pred, 0, ax) * count_range(pred, ax + 1)) if ax > 0 else \
                g.scalar(float(count_range(pred, ax + 1)))
        g.op("Div", [g.op1("ReduceSum", [right], keepdims=0), n], e.tops[:1])
        if len(e.tops) > 1:  # per-class accuracy (0 for classes absent from the batch)
            onehot = g.op1("Cast", [g.op1("Equal", [lab, g.const([list(range(c))])])], to=1)
            if valid is not None:
                onehot = g.op1("Mul", [onehot, valid])
            hits = g.op1("ReduceSum", [g.op1("Mul", [onehot, right]), g.const([0])], keepdims=0)
            nums = g.op1("ReduceSum", [onehot, g.const([0])], keepdims=0)
            ratio = g.op1("Div", [hits, g.op1("Max", [nums, g.scalar(1.0)])])
            g.op("Identity", [ratio], e.tops[1:2])
