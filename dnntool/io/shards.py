"""Sharded databases: the names ``convert-images --shards K`` writes and the source lists that read them.

Shard ``i`` of ``K`` of ``DB`` is ``DB-0000i-of-0000K`` (TFRecord's names, five digits at least). A
data source names one database, a comma-separated list (``a_lmdb,b_lmdb``) or the shards of one
(``DB@K``, the sharded-file spec of Google's tools, e.g. ``train_lmdb@4``); list items may be ``@K``
specs themselves. A path that exists as written is always one database, so a name holding ``,`` or
``@`` still opens.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from pathlib import Path

from dnntool.errors import FormatError

_SPEC = re.compile(r"^(?P<base>.+)@(?P<count>\d+)$")


def shard_name(db: str | os.PathLike[str], index: int, count: int) -> str:
    """``DB-00002-of-00004``: shard ``index`` (0-based) of ``count``."""
    base = os.fspath(db)
    return f"{base.rstrip('/') or base}-{index:05d}-of-{count:05d}"


def shard_sets(db: str | os.PathLike[str]) -> dict[int, list[str]]:
    """The shard databases of ``db`` found beside it (``DB-0000i-of-0000K`` holding a data.mdb),
    by shard count K, each list sorted."""
    base = Path(os.fspath(db).rstrip("/") or os.fspath(db))
    pattern = re.compile(re.escape(base.name) + r"-(\d{5,})-of-(\d{5,})")
    found: dict[int, list[str]] = {}
    with contextlib.suppress(OSError):
        for p in sorted(base.parent.iterdir()):
            m = pattern.fullmatch(p.name)
            if m and (p / "data.mdb").exists():
                found.setdefault(int(m[2]), []).append(str(p))
    return found


def source_paths(source: str | os.PathLike[str], exists: Callable[[str], bool] = os.path.exists) -> list[str]:
    """The databases a data source names, in reading order (see the module notes).

    ``exists`` tells whether a path names something as written (callers resolve relative paths
    their own way). Raises FormatError for an empty list item or ``@0``.
    """
    spec = os.fspath(source)
    if exists(spec) or ("," not in spec and not _SPEC.match(spec)):
        return [spec]
    out: list[str] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            raise FormatError(f"an empty item in the list '{spec}' (expected 'A,B,...')")
        m = _SPEC.match(item)
        if m is None or exists(item):
            out.append(item)
            continue
        count = int(m["count"])
        if count < 1:
            raise FormatError(f"'{item}': the shard count must be at least 1")
        out += [shard_name(m["base"], i, count) for i in range(count)]
    return out
