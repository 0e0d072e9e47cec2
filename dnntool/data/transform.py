"""Caffe's DataTransformer (data_transformer.cpp) on numpy arrays.

A record is C x H x W (uint8 pixels or float values, BGR as Caffe stores them). The output is
float32 C x h x w: ``(x - mean) * scale``, cropped to ``crop_size`` (random offset in TRAIN, centred
in TEST), the mean file read at the same offset as the crop, then mirrored.

One deliberate difference: Caffe draws a random mirror whenever ``mirror: true``, even in TEST; here
mirroring is random in TRAIN only, so scoring a net is deterministic.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dnntool.errors import FormatError, NetError
from dnntool.layers.base import format_shape
from dnntool.proto import caffe_pb2


def load_mean_file(path: str | os.PathLike[str]) -> np.ndarray:
    """A mean as float32 C x H x W from a ``.binaryproto`` (1 x C x H x W) or a ``.npy``."""
    p = str(path)
    if p.endswith(".npy"):
        try:
            arr = np.load(p)
        except (OSError, ValueError) as e:
            raise FormatError(f"{p}: cannot read the mean: {e}") from None
    else:
        from dnntool.io.blob import read_binaryproto

        arr = read_binaryproto(p)
    arr = np.asarray(arr, np.float32)
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise FormatError(f"{p}: a mean must be C x H x W (or 1 x C x H x W), got shape {list(arr.shape)}")
    return np.ascontiguousarray(arr)


@dataclass(frozen=True)
class Transformer:
    """The transform of one data layer (its ``transform_param``) for one phase.

    ``crop`` is (h, w): Caffe crops squares (``crop_size``); featuremap-dump also crops to a
    non-square net input.
    """

    scale: float = 1.0
    mirror: bool = False
    crop: tuple[int, int] | None = None
    mean: np.ndarray | None = None  # C x H x W at record size (mean_file)
    mean_values: tuple[float, ...] = ()
    train: bool = False
    force_color: bool = False
    force_gray: bool = False

    def __post_init__(self) -> None:
        if self.mean is not None and self.mean_values:
            raise NetError("transform_param: cannot specify mean_file and mean_value at the same time")
        if self.force_color and self.force_gray:
            raise NetError("transform_param: cannot set both force_color and force_gray")

    @classmethod
    def from_param(
        cls,
        tp: caffe_pb2.TransformationParameter,
        phase: int | str = caffe_pb2.TEST,
        resolve: Callable[[str], str] | None = None,
        where: str = "transform_param",
    ) -> Transformer:
        """Build from a layer's ``transform_param``; ``resolve`` maps a relative mean_file to a path."""
        from dnntool.net import parse_phase

        if tp.HasField("mean_file") and len(tp.mean_value):
            raise NetError(f"{where}: cannot specify mean_file and mean_value at the same time")
        mean = None
        if tp.HasField("mean_file"):
            path = resolve(tp.mean_file) if resolve is not None else tp.mean_file
            try:
                mean = load_mean_file(path)
            except FormatError as e:
                raise FormatError(f"{where}: mean_file {e}") from None
        k = int(tp.crop_size)
        return cls(
            scale=float(tp.scale), mirror=bool(tp.mirror), crop=(k, k) if k else None, mean=mean,
            mean_values=tuple(float(v) for v in tp.mean_value), train=parse_phase(phase) == caffe_pb2.TRAIN,
            force_color=bool(tp.force_color), force_gray=bool(tp.force_gray),
        )

    # -- shapes and checks ---------------------------------------------------------------------
    def out_shape(self, chw: tuple[int, ...]) -> tuple[int, int, int]:
        """Output C x h x w for records of ``chw``."""
        c, h, w = (int(d) for d in chw)
        return (c, *self.crop) if self.crop else (c, h, w)

    def check(self, chw: tuple[int, ...], where: str = "record") -> None:
        """Caffe's CHECKs for a record of ``chw``, as one-line errors."""
        c, h, w = (int(d) for d in chw)
        if c <= 0:
            raise FormatError(f"{where} has no channels")
        if self.crop and (self.crop[0] > h or self.crop[1] > w):
            raise FormatError(f"{where} is {format_shape(chw)}, smaller than the {format_shape(self.crop)} crop")
        if self.mean is not None and tuple(self.mean.shape) != (c, h, w):
            raise FormatError(
                f"{where} is {format_shape(chw)} but the mean is {format_shape(self.mean.shape)} (Caffe needs the mean"
                " at the record size; the crop is taken from both at the same offset)"
            )
        if self.mean_values and len(self.mean_values) not in (1, c):
            raise NetError(
                f"transform_param: {len(self.mean_values)} mean_value(s) for {c} channels"
                f" (specify either 1 mean_value or as many as channels: {c})"
            )

    def _mean_values(self, c: int) -> np.ndarray:
        v = self.mean_values * c if len(self.mean_values) == 1 else self.mean_values
        return np.asarray(v, np.float32).reshape(c, 1, 1)

    @property
    def random(self) -> bool:
        """Whether records draw random numbers (crop offsets, mirror): TRAIN with crop or mirror."""
        return self.train and (bool(self.crop) or self.mirror)

    # -- the transform -------------------------------------------------------------------------
    def offsets(self, h: int, w: int, rng: np.random.Generator | None) -> tuple[bool, int, int]:
        """(mirror, h_off, w_off) for one record, drawing in Caffe's order: mirror, then h, then w."""
        mirror = False
        if self.train and self.mirror:
            mirror = bool(_need(rng).integers(2))
        if not self.crop:
            return mirror, 0, 0
        ch, cw = self.crop
        if self.train:
            r = _need(rng)
            return mirror, int(r.integers(h - ch + 1)), int(r.integers(w - cw + 1))
        return mirror, (h - ch) // 2, (w - cw) // 2

    def _apply(self, x: np.ndarray, mirror: bool, h_off: int, w_off: int) -> np.ndarray:
        """x is (..., C, H, W); the same crop/mirror for every leading index."""
        c, h, w = x.shape[-3:]
        oh, ow = self.crop if self.crop else (h, w)
        out = x[..., h_off:h_off + oh, w_off:w_off + ow].astype(np.float32)
        if self.mean is not None:
            out -= self.mean[:, h_off:h_off + oh, w_off:w_off + ow]
        elif self.mean_values:
            out -= self._mean_values(c)
        if self.scale != 1.0:
            out *= np.float32(self.scale)
        return out[..., ::-1] if mirror else out

    def __call__(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Transform one C x H x W record to float32 C x h x w."""
        self.check(x.shape)
        return np.ascontiguousarray(self._apply(x, *self.offsets(x.shape[1], x.shape[2], rng)))

    def batch(self, xs: np.ndarray, rng: np.random.Generator | None = None,
              where: str = "record") -> np.ndarray:
        """Transform N x C x H x W records (one shape) to float32 N x C x h x w.

        Without randomness the whole batch is one vectorised operation; otherwise each record
        draws its own offsets from ``rng`` in order, as Caffe's prefetch thread does.
        """
        self.check(xs.shape[1:], where)
        n, _, h, w = xs.shape
        if not self.random:
            return np.ascontiguousarray(self._apply(xs, *self.offsets(h, w, None)))
        out = np.empty((n, *self.out_shape(xs.shape[1:])), np.float32)
        for i in range(n):
            out[i] = self._apply(xs[i], *self.offsets(h, w, rng))
        return out


def _need(rng: np.random.Generator | None) -> np.random.Generator:
    if rng is None:
        raise ValueError("a TRAIN-phase transform with crop or mirror needs a seeded rng")
    return rng
