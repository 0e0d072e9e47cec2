"""dnntool: Caffe-style deep-learning utilities.

The public API is importable from here lazily, so ``import dnntool`` stays fast::

    from dnntool import Net
    net = Net.from_prototxt("lenet.prototxt", phase="test")
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Net": "dnntool.net",
    "TRAIN": "dnntool.net",
    "TEST": "dnntool.net",
    "DnnToolError": "dnntool.errors",
    "read_net": "dnntool.io.prototxt",
    "read_solver": "dnntool.io.prototxt",
    "write_prototxt": "dnntool.io.prototxt",
    "read_caffemodel": "dnntool.io.caffemodel",
    "load_weights": "dnntool.io.caffemodel",
    "save_caffemodel": "dnntool.io.caffemodel",
    "read_binaryproto": "dnntool.io.blob",
    "write_binaryproto": "dnntool.io.blob",
    "read_solverstate": "dnntool.io.caffemodel",
    "register_layer": "dnntool.layers.registry",
    "LayerDef": "dnntool.layers.base",
    "param_count": "dnntool.tools.stats",
    "flops": "dnntool.tools.stats",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dnntool' has no attribute {name!r}")
