"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
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


def zoo_args(doc: str, repeat: int) -> tuple[argparse.Namespace, Path | None]:
    """``--repeat`` and ``--zoo`` parsed; the zoo folder, or None (after saying so) when absent."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=repeat)
    ap.add_argument("--zoo", default=ZOO_DEFAULT)
    args = ap.parse_args()
    zoo = Path(args.zoo)
    if not zoo.is_dir():
        print(f"zoo not found at {zoo}; pass --zoo", file=sys.stderr)
        return args, None
    return args, zoo
