"""Write scikit-learn's handwritten digits (1797 8x8 grey images) as PNG files in class folders,
OUT/<digit>/<index>.png, for `dnntool convert-images --from-folders`.

Usage: python make_digits.py OUT        (needs scikit-learn and opencv)
"""

from __future__ import annotations

import sys
from pathlib import Path


def write_digits(out: str) -> int:
    """Write every digit as an 8-bit PNG (0..16 scaled to 0..255); returns the count."""
    import cv2
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (img, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = Path(out) / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i:04d}.png"), np.round(img * 255 / 16).astype(np.uint8))
    return len(digits.images)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(f"{write_digits(sys.argv[1])} images written to {sys.argv[1]}/")
