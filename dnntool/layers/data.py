"""Data layers: Input, Data, ImageData, HDF5Data, MemoryData, DummyData, WindowData.

Their tops are the net's inputs. A shape comes from ``--input-shape top=...`` when given, else from
the layer's parameters or, as Caffe does at setup, from the first record of its source.
"""

from __future__ import annotations

import os
from pathlib import Path

from dnntool.errors import FormatError, NeedsInputShape
from dnntool.layers.base import DataLayer, Shape
from dnntool.layers.registry import register_layer


def _dims(s) -> str:
    return ",".join(str(d) for d in s)


class SourcedData(DataLayer):
    """A data layer that reads its first record from a source to know its shape."""

    bottoms = (0, 0)
    tops = (1, 2)

    def resolve(self, source: str) -> Path | None:
        """The source path as Caffe would open it (relative to the cwd), else next to the prototxt."""
        if not source:
            return None
        p = Path(source)
        if p.exists():
            return p
        if self.ctx.net_path and not p.is_absolute():
            q = Path(self.ctx.net_path).resolve().parent / source
            if q.exists():
                return q
        return None

    def need_shape(self, why: str, guess: Shape | None = None) -> NeedsInputShape:
        top = self.lp.top[0] if self.lp.top else "data"
        example = _dims(guess) if guess else "N,C,H,W"
        return self.error(
            f"{why}, so the shape of '{top}' cannot be read; give it with --input-shape {top}={example}",
            NeedsInputShape,
        )  # type: ignore[return-value]

    def crop(self) -> int:
        return self.lp.transform_param.crop_size

    def batch(self) -> int:
        return 1

    def record_chw(self) -> tuple[int, int, int]:
        """(C, H, W) of one record before cropping."""
        raise NotImplementedError

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        tops = list(self.lp.top)
        given = self.ctx.input_shape(tops[0])
        if given is not None:
            data = given
        else:
            c, h, w = self.record_chw()
            k = self.crop()
            if k:
                if k > h or k > w:
                    raise self.shape_error(f"crop_size {k} is larger than the {h}x{w} records")
                h = w = k
            data = (self.batch(), c, h, w)
        shapes = [data]
        if len(tops) > 1:
            label = self.ctx.input_shape(tops[1])
            shapes.append(label if label is not None else (data[0],))
        return shapes

    def summary(self) -> str:
        k = self.crop()
        return f"batch {self.batch()}" + (f", crop {k}" if k else "")


@register_layer("Input")
class Input(DataLayer):
    """Feeds blobs of the shapes in ``input_param`` (one shape for all tops, or one per top)."""

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        shapes = [tuple(s.dim) for s in self.lp.input_param.shape]
        tops = list(self.lp.top)
        if len(shapes) not in (0, 1, len(tops)):
            raise self.error(f"{len(shapes)} input_param shapes for {len(tops)} tops (give 1 or {len(tops)})")
        out = []
        for i, t in enumerate(tops):
            given = self.ctx.input_shape(t)
            if given is not None:
                out.append(given)
            elif shapes:
                out.append(shapes[0] if len(shapes) == 1 else shapes[i])
            else:
                raise self.error(
                    f"input_param gives no shape for '{t}'; give it with --input-shape {t}=N,C,H,W",
                    NeedsInputShape,
                )
        return out

    def summary(self) -> str:
        return ""


@register_layer("Data")
class Data(SourcedData):
    """Reads Datum records from an LMDB (``data_param.source``); tops data (N,C,H,W) and label (N)."""

    def batch(self) -> int:
        return self.lp.data_param.batch_size or 1

    def record_chw(self) -> tuple[int, int, int]:
        from dnntool.io.datadb import datum_shape, first_datum, is_lmdb, lmdb_entries
        from dnntool.io.shards import source_paths

        src = self.lp.data_param.source
        guess = (self.batch(), 3, self.crop(), self.crop()) if self.crop() else None
        if not src:
            raise self.need_shape("no data_param.source", guess)
        try:
            names = source_paths(src, lambda p: self.resolve(p) is not None)  # a list or DB@K: shards
        except FormatError as e:
            raise self.error(f"source '{src}': {e.message}") from None
        paths = []
        for name in names:
            path = self.resolve(name)
            what = f"source '{src}'" if name == src else f"'{name}' of source '{src}'"
            if path is None:
                raise self.need_shape(f"{what} does not exist", guess)
            if not is_lmdb(path):
                raise self.need_shape(f"{what} is not an LMDB (LevelDB is not supported)", guess)
            paths.append(path)
        try:  # the first record of the first database that has one
            path = next((p for p in paths if len(paths) == 1 or lmdb_entries(p)), paths[0])
            c, h, w = datum_shape(first_datum(path))
        except FormatError as e:
            raise self.error(f"source '{src}': {e.message}") from None
        if self.lp.data_param.force_encoded_color:
            c = 3
        return c, h, w


@register_layer("ImageData")
class ImageData(SourcedData):
    """Reads images listed in ``image_data_param.source`` (``path label`` lines)."""

    def batch(self) -> int:
        return self.lp.image_data_param.batch_size or 1

    def record_chw(self) -> tuple[int, int, int]:
        p = self.lp.image_data_param
        c = 3 if p.is_color else 1
        if bool(p.new_height) != bool(p.new_width):  # Caffe's image_data_layer.cpp refuses one alone
            raise self.error("new_height and new_width must be set together (or neither)")
        if p.new_height and p.new_width:
            return c, p.new_height, p.new_width
        path = self.resolve(p.source)
        if path is None:
            raise self.need_shape(f"source '{p.source}' does not exist and new_height/new_width are not set")
        with open(path, encoding="utf-8", errors="replace") as f:
            first = next((ln.strip() for ln in f if ln.strip()), "")
        img_path = first.rsplit(maxsplit=1)[0] if " " in first else first
        full = os.path.join(p.root_folder, img_path)
        import cv2

        img = cv2.imread(full, cv2.IMREAD_COLOR if p.is_color else cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise self.need_shape(f"first image '{full}' of '{p.source}' cannot be read")
        return c, img.shape[0], img.shape[1]


@register_layer("WindowData")
class WindowData(SourcedData):
    """R-CNN window sampler: crops of ``crop_size`` from the windows file; label (N)."""

    def batch(self) -> int:
        return self.lp.window_data_param.batch_size or 1

    def crop(self) -> int:
        return self.lp.transform_param.crop_size or self.lp.window_data_param.crop_size

    def record_chw(self) -> tuple[int, int, int]:
        k = self.crop()
        if not k:
            raise self.need_shape("crop_size is not set")
        return 3, k, k


@register_layer("HDF5Data")
class HDF5Data(DataLayer):
    """Reads the datasets named by its tops from the HDF5 files listed in ``source`` (needs h5py)."""

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        p = self.lp.hdf5_data_param
        missing = [t for t in self.lp.top if t not in self.ctx.input_shapes]
        files: list[str] = []
        if missing:
            src = Path(p.source)
            if src.exists():
                files = [ln.strip() for ln in src.read_text().splitlines() if ln.strip()]
            try:
                import h5py  # optional dependency
            except ImportError:
                h5py = None
            if not files or h5py is None or not Path(files[0]).exists():
                why = ("h5py is not installed" if files and h5py is None
                       else f"source '{p.source}' does not list a readable HDF5 file")
                tops = " ".join(f"--input-shape {t}=N,..." for t in missing)
                raise self.error(f"{why}; give the top shapes with {tops}", NeedsInputShape)
        out = []
        for t in self.lp.top:
            given = self.ctx.input_shape(t)
            if given is not None:
                out.append(given)
                continue
            import h5py

            with h5py.File(files[0], "r") as f:
                if t not in f:
                    raise self.error(f"HDF5 file '{files[0]}' has no dataset '{t}'")
                out.append((p.batch_size or 1, *f[t].shape[1:]))
        return out


@register_layer("MemoryData")
class MemoryData(DataLayer):
    """Fed from memory (pycaffe ``set_input_arrays``): data (batch, channels, height, width), label."""

    tops = (1, 2)

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        p = self.lp.memory_data_param
        data = self.ctx.input_shape(self.lp.top[0]) or (p.batch_size, p.channels, p.height, p.width)
        if not all(data):  # memory_data_layer.cpp: CHECK_GT(batch_size_ * size_, 0)
            raise self.error("batch_size, channels, height and width must be set and positive in"
                             " memory_data_param")
        shapes = [data]
        if len(self.lp.top) > 1:
            shapes.append(self.ctx.input_shape(self.lp.top[1]) or (data[0],))
        return shapes


@register_layer("DummyData")
class DummyData(DataLayer):
    """Constant or random blobs of given shapes (``shape`` or legacy num/channels/height/width)."""

    def infer_shapes(self, bottoms: list[Shape]) -> list[Shape]:
        p = self.lp.dummy_data_param
        n = len(self.lp.top)
        names = ("num", "channels", "height", "width")
        legacy = [list(getattr(p, f)) for f in names]
        if any(legacy):  # dummy_data_layer.cpp: each legacy field once, or once per top
            if p.shape:
                raise self.error("both shape and the legacy num/channels/height/width were specified")
            for f, x in zip(names, legacy, strict=True):
                if len(x) not in (1, n):
                    raise self.error(f"give '{f}' once or once per top ({n}), got {len(x)}")
            shapes = [tuple(x[0] if len(x) == 1 else x[i] for x in legacy) for i in range(n)]
        else:
            shapes = [tuple(s.dim) for s in p.shape]
        if len(shapes) not in (1, n) and not all(t in self.ctx.input_shapes for t in self.lp.top):
            raise self.error(f"{len(shapes)} shapes for {n} tops (give 1 or {n})")
        return [self.ctx.input_shape(t) or (shapes[0] if len(shapes) == 1 else shapes[i])
                for i, t in enumerate(self.lp.top)]
