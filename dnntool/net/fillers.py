"""Caffe's weight fillers (filler.hpp), in numpy, seeded: constant, uniform, gaussian (with sparse),
positive_unitball, xavier, msra, bilinear."""

from __future__ import annotations

import math

import numpy as np

from dnntool.errors import NetError
from dnntool.proto import caffe_pb2

FP = caffe_pb2.FillerParameter


def _fans(shape: tuple[int, ...]) -> tuple[float, float]:
    count = math.prod(shape)
    fan_in = count / shape[0] if shape else 1
    fan_out = count / shape[1] if len(shape) > 1 else count  # Caffe: ND-compatible fan_out
    return fan_in, fan_out


def _n(filler: caffe_pb2.FillerParameter, shape: tuple[int, ...]) -> float:
    fan_in, fan_out = _fans(shape)
    if filler.variance_norm == FP.FAN_OUT:
        return fan_out
    if filler.variance_norm == FP.AVERAGE:
        return (fan_in + fan_out) / 2
    return fan_in


def fill(filler: caffe_pb2.FillerParameter | None, shape: tuple[int, ...], rng: np.random.Generator,
         where: str = "blob") -> np.ndarray:
    """A float32 array of ``shape`` filled as Caffe's filler of that type would (statistically)."""
    shape = tuple(int(d) for d in shape)
    f = filler if filler is not None else FP()
    kind = f.type or "constant"
    if kind == "constant":
        out = np.full(shape, f.value, np.float32)
    elif kind == "uniform":
        out = rng.uniform(f.min, f.max, shape)
    elif kind == "gaussian":
        out = rng.normal(f.mean, f.std, shape)
        if f.sparse >= 0:  # keep each weight with probability sparse / num_outputs
            if len(shape) < 2:
                raise NetError(f"{where}: sparse gaussian filling needs a blob with at least 2 axes")
            p = f.sparse / shape[0]
            out = out * (rng.random(shape) < p)
    elif kind == "positive_unitball":
        out = rng.uniform(0, 1, shape)
        if shape:
            flat = out.reshape(shape[0], -1)
            out = (flat / flat.sum(axis=1, keepdims=True)).reshape(shape)
    elif kind == "xavier":
        scale = math.sqrt(3.0 / _n(f, shape))
        out = rng.uniform(-scale, scale, shape)
    elif kind == "msra":
        out = rng.normal(0.0, math.sqrt(2.0 / _n(f, shape)), shape)
    elif kind == "bilinear":
        if len(shape) != 4 or shape[2] != shape[3]:
            raise NetError(f"{where}: the bilinear filler needs a 4-D blob with square kernels, got {list(shape)}")
        k = shape[3]
        fac = math.ceil(k / 2)
        c = (2 * fac - 1 - fac % 2) / (2.0 * fac)
        idx = np.arange(k)
        w1 = 1 - np.abs(idx / fac - c)
        out = np.broadcast_to(np.outer(w1, w1), shape)
    else:
        raise NetError(f"{where}: unknown filler type '{kind}' (known: constant, uniform, gaussian,"
                       " positive_unitball, xavier, msra, bilinear)")
    return np.ascontiguousarray(out, dtype=np.float32)
