"""Real images for dataset tests, from files scikit-learn ships (no network): crops of its two
sample photos (china.jpg, flower.jpg) and its 8x8 handwritten digits."""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np


@functools.cache
def photos() -> tuple[np.ndarray, np.ndarray]:
    """china.jpg and flower.jpg as BGR arrays (427 x 640 x 3)."""
    import sklearn.datasets

    folder = Path(sklearn.datasets.__file__).parent / "images"
    return tuple(cv2.imread(str(folder / name), cv2.IMREAD_COLOR) for name in ("china.jpg", "flower.jpg"))


def crops(count: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` random height x width crops, alternating between the two photos."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        img = photos()[i % 2]
        y = int(rng.integers(0, img.shape[0] - height + 1))
        x = int(rng.integers(0, img.shape[1] - width + 1))
        out.append(np.ascontiguousarray(img[y:y + height, x:x + width]))
    return out


def write_crops(folder: Path, count: int, height: int = 24, width: int = 32, ext: str = ".png",
                seed: int = 0, sizes: list[tuple[int, int]] | None = None) -> list[tuple[str, int]]:
    """Save crops as ``img NNN<ext>`` (a space in every name) and return ``(name, label)`` pairs;
    ``sizes`` gives each image its own (height, width)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    items = []
    for i in range(count):
        h, w = sizes[i % len(sizes)] if sizes else (height, width)
        photo = photos()[i % 2]
        y = int(rng.integers(0, photo.shape[0] - h + 1))
        x = int(rng.integers(0, photo.shape[1] - w + 1))
        img = photo[y:y + h, x:x + w]
        name = f"img {i:03d}{ext}"
        assert cv2.imwrite(str(folder / name), img)
        items.append((name, i % 3))
    return items


def write_list(path: Path, items: list[tuple[str, int]]) -> Path:
    path.write_text("".join(f"{name} {label}\n" for name, label in items))
    return path


def digits_by_class(root: Path, per_class: int | None = None) -> dict[str, list[str]]:
    """scikit-learn's digits as 8x8 grayscale PNGs in ROOT/<digit>/NNNN.png; returns class -> names."""
    import sklearn.datasets

    d = sklearn.datasets.load_digits()
    out: dict[str, list[str]] = {}
    counts: dict[int, int] = {}
    for i, (img, label) in enumerate(zip(d.images, d.target, strict=True)):
        label = int(label)
        if per_class is not None and counts.get(label, 0) >= per_class:
            continue
        counts[label] = counts.get(label, 0) + 1
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{i:04d}.png"
        assert cv2.imwrite(str(folder / name), (img * 255.0 / 16.0).round().astype(np.uint8))
        out.setdefault(str(label), []).append(f"{label}/{name}")
    return out


def read_db(path: Path) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of an LMDB, in key order."""
    import lmdb

    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return [(bytes(k), bytes(v)) for k, v in txn.cursor()]
    finally:
        env.close()
