"""Write scikit-learn's handwritten digits (1797 8x8 grey images) as PNG files in class folders,
OUT/<digit>/<index>.png, for `dnntool convert-images --from-folders`; with --list, also the list
file (`<digit>/<index>.png <digit>` lines, paths relative to OUT) of one part of a seeded,
stratified 80/20 train/val split, for `dnntool convert-images OUT/ LISTFILE DB`.

Usage: python make_digits.py OUT [--list train|val LISTFILE]     (needs scikit-learn and opencv)

A PNG is rewritten only when its bytes differ, and every file is written under a temporary name
and renamed into place, so a second run changes nothing and an interrupted one leaves no partial
file (what `make` needs: samples/digits/Makefile).
"""

from __future__ import annotations

import sys
from pathlib import Path

VAL_FRACTION = 0.2
SEED = 0


def _write_atomic(path: Path, data: bytes) -> None:
    from dnntool.io.atomic import write_bytes

    if not (path.exists() and path.read_bytes() == data):
        write_bytes(path, data)


def write_digits(out: str) -> int:
    """Write every digit as an 8-bit PNG (0..16 scaled to 0..255); returns the count."""
    import cv2
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (img, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = Path(out) / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        ok, png = cv2.imencode(".png", np.round(img * 255 / 16).astype(np.uint8))
        assert ok
        _write_atomic(folder / f"{i:04d}.png", png.tobytes())
    return len(digits.images)


def split_lines(part: str) -> list[str]:
    """The ``path label`` lines of ``part`` ("train" or "val") of the seeded stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    labels = [int(t) for t in load_digits().target]
    train, val = train_test_split(range(len(labels)), test_size=VAL_FRACTION, random_state=SEED,
                                  stratify=labels)
    return [f"{labels[i]}/{i:04d}.png {labels[i]}\n" for i in sorted(train if part == "train" else val)]


def main(argv: list[str]) -> str:
    if len(argv) == 1:
        return f"{write_digits(argv[0])} images written to {argv[0]}/"
    if len(argv) == 4 and argv[1] == "--list" and argv[2] in ("train", "val"):
        count = write_digits(argv[0])
        lines = split_lines(argv[2])
        _write_atomic(Path(argv[3]), "".join(lines).encode())
        return f"{count} images in {argv[0]}/; {len(lines)} {argv[2]} lines written to {argv[3]}"
    sys.exit(__doc__)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
