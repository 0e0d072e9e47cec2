"""Locate the read-only corpus of real Caffe files ("the zoo") used by tests."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def zoo_dir() -> Path | None:
    """Return the zoo folder, or None when it is not available.

    ``$DNNTOOL_ZOO`` wins when set; otherwise the corpus is expected in
    ``shared/zoo`` next to the repository checkout (``<repo>/../shared/zoo``).
    """
    override = os.environ.get("DNNTOOL_ZOO")
    path = Path(override) if override else REPO_ROOT.parent / "shared" / "zoo"
    return path if path.is_dir() else None
