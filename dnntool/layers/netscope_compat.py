"""Netscope's pseudo layer types, found in prototxts written for the Netscope viewer (not in Caffe).

``data`` (lower case) declares the net's input like an ``Input`` layer; ``implicit`` is a sink that
marks blobs as outputs of the drawing (Netscope's Faster R-CNN presets): it has bottoms and no tops.
"""

from __future__ import annotations

from dnntool.layers.base import Emit, LayerDef, Shape
from dnntool.layers.data import Input
from dnntool.layers.registry import register_layer


@register_layer("data")
class NetscopeData(Input):
    """Netscope's input declaration: top shapes from ``input_param`` exactly as an Input layer."""


@register_layer("implicit")
class NetscopeImplicit(LayerDef):
    """Netscope's sink: consumes any bottoms, produces nothing and costs nothing."""

    bottoms = (0, None)
    tops = (0, 0)

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        return []

    def forward(self, e: Emit) -> None:
        """Produces nothing (like Silence)."""
