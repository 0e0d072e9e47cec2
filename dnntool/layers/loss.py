"""Losses and metrics. Loss layers weigh their first top by 1 unless ``loss_weight`` says otherwise."""

from __future__ import annotations

from dnntool.layers.base import Cost, LayerDef, LossLayer, Shape, count, count_range
from dnntool.layers.registry import register_layer


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


@register_layer("MultinomialLogisticLoss")
class MultinomialLogisticLoss(LossLayer):
    """-log(p[label]) / N for probabilities p."""

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        p, label = bottoms
        _same_num(self, bottoms)
        if count(label) != p[0]:
            raise self.shape_error(f"label {list(label)} needs {p[0]} values (one per sample)")
        return [()]


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
