"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path

#: ../shared/zoo beside the repository, unless $DNNTOOL_ZOO says otherwise
ZOO_DEFAULT = os.environ.get("DNNTOOL_ZOO", str(Path(__file__).resolve().parents[2] / "shared" / "zoo"))


def timed(cmd: list[str], repeat: int) -> float:
    """Median wall time of a command, in seconds (one warm-up run first; output discarded)."""
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)
