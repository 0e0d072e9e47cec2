"""A custom layer as a dnntool plugin: ContrastiveAccuracy, as siamese-net Caffe forks define it.

Bottoms: two feature blobs (N, D...) and a similarity label (N); top: the fraction of pairs whose
Euclidean distance falls on the right side of ``contrastive_loss_param.margin`` (similar pairs closer
than the margin, dissimilar ones farther). Installing this package (``pip install samples/plugin``)
makes ``type: "ContrastiveAccuracy"`` known to every dnntool command.
"""

from __future__ import annotations

from dnntool.layers.base import Cost, LayerDef, Shape, count
from dnntool.layers.registry import register_layer


@register_layer("ContrastiveAccuracy")
class ContrastiveAccuracy(LayerDef):
    """mean over pairs of [d(a, b) < margin] == similar, d the Euclidean distance."""

    family = "loss"
    bottoms = (3, 3)
    tops = (1, 1)

    def setup(self) -> None:
        if self.lp.contrastive_loss_param.margin <= 0:
            raise self.error("contrastive_loss_param.margin must be > 0")

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        a, b, sim = bottoms
        if a != b:
            raise self.shape_error(f"feature bottoms {list(a)} and {list(b)} must have the same shape")
        if count(sim) != a[0]:
            raise self.shape_error(f"similarity bottom {list(sim)} needs one value per pair ({a[0]})")
        return [()]

    def cost(self, bottoms: list[Shape], tops: list[Shape]) -> Cost:
        n = count(bottoms[0])
        return Cost(n, 3 * n)  # difference, square-accumulate, then a compare per pair

    def summary(self) -> str:
        return f"margin {self.lp.contrastive_loss_param.margin:g}"
