"""Weights for a Net: matching a caffemodel to it by layer name, and filling new ones from fillers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dnntool.errors import WeightsError
from dnntool.net.net import Net, format_shape

if TYPE_CHECKING:
    from dnntool.io.caffemodel import Weights


def _same_shape(ours: tuple[int, ...], theirs: tuple[int, ...]) -> bool:
    """Caffe's blob shape check, lenient to legacy 4-D (num, channels, height, width) blobs."""
    if tuple(ours) == tuple(theirs):
        return True
    if len(theirs) == 4 and len(ours) <= 4:
        return (1,) * (4 - len(ours)) + tuple(ours) == tuple(theirs)
    return False


def check_weights(net: Net, weights: Weights) -> dict[str, list[tuple[int, ...]]]:
    """Match a caffemodel to the net by layer name; any disagreement names the layer and both shapes."""
    found: dict[str, list[tuple[int, ...]]] = {}
    for layer in net.layers:
        owned = [p for p in layer.params if p.shared_from is None]
        if not owned:
            continue
        if layer.name not in weights:
            raise WeightsError(
                f"layer '{layer.name}' ({layer.type}) has {len(layer.params)} parameter blob(s) in the"
                f" prototxt but none in the caffemodel", layer=layer.name,
            )
        arrays = weights[layer.name]
        if len(arrays) != len(layer.params):
            raise WeightsError(
                f"layer '{layer.name}' ({layer.type}): the caffemodel has {len(arrays)} blob(s), the"
                f" prototxt expects {len(layer.params)} ({', '.join(p.blob.role for p in layer.params)})",
                layer=layer.name,
            )
        for p, a in zip(layer.params, arrays, strict=True):
            if not _same_shape(p.shape, a.shape):
                raise WeightsError(
                    f"layer '{layer.name}' ({layer.type}) {p.blob.role}: the caffemodel has shape"
                    f" {format_shape(a.shape)}, the prototxt gives {format_shape(p.shape)}", layer=layer.name,
                )
        found[layer.name] = [tuple(a.shape) for a in arrays]
    return found


def init_weights(net: Net, seed: int = 0) -> Weights:
    """Fill every parameter blob from its prototxt filler (as Caffe does at net setup), seeded.

    Layers are filled in net order, each blob from its own generator derived from ``seed`` and
    the layer name, so adding a layer does not change the others' values.
    """
    import zlib

    import numpy as np

    from dnntool.io.caffemodel import Weights
    from dnntool.net.fillers import fill

    w = Weights()
    for layer in net.layers:
        owned = [p for p in layer.params if p.shared_from is None]
        if not owned or layer.name in w.blobs:
            continue
        rng = np.random.default_rng([seed, zlib.crc32(layer.name.encode())])
        w.blobs[layer.name] = [
            fill(p.blob.filler, p.shape, rng, f"layer '{layer.name}' {p.blob.role}") for p in layer.params
        ]
        w.types[layer.name] = layer.type
    return w


def layer_arrays(net: Net, weights: Weights) -> dict[str, list]:
    """Arrays for every layer's params (shared blobs resolved to their owner), reshaped to our shapes."""
    check_weights(net, weights)
    out = {}
    for layer in net.layers:
        if not layer.params:
            continue
        arrays = []
        for k, p in enumerate(layer.params):
            src = p.shared_from or layer.name
            if p.shared_from is not None:
                owner = net.layer(src)
                k = next(i for i, q in enumerate(owner.params) if q.share_name == p.share_name)
            arrays.append(weights[src][k].reshape(p.shape))
        out[layer.name] = arrays
    return out
