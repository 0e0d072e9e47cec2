"""Build a one-layer net from a prototxt snippet fed by an Input layer, for layer case tables."""

from __future__ import annotations

from collections.abc import Sequence

from dnntool.io.prototxt import parse_net_text
from dnntool.net import Layer, Net


def build_net(layer_text: str, bottoms: Sequence[Sequence[int]], phase: str = "test",
              names: Sequence[str] | None = None) -> Net:
    """A net: ``input`` (Input layer with tops ``names`` or b0, b1, ...) then ``layer_text``."""
    names = list(names or [f"b{i}" for i in range(len(bottoms))])
    shapes = "".join(
        "  shape { " + " ".join(f"dim: {d}" for d in s) + " }\n" for s in bottoms
    )
    tops = "".join(f'  top: "{n}"\n' for n in names)
    text = f'layer {{\n  name: "input"\n  type: "Input"\n{tops}  input_param {{\n{shapes}  }}\n}}\n' if names else ""
    text += layer_text
    src = parse_net_text(text, "case.prototxt")
    return Net.from_param(src.param, phase, layer_locs=src.layer_locs, path="case.prototxt")


def build(layer_text: str, bottoms: Sequence[Sequence[int]], phase: str = "test",
          names: Sequence[str] | None = None) -> Layer:
    """The last layer of :func:`build_net`."""
    return build_net(layer_text, bottoms, phase, names).layers[-1]
