"""Benchmark: ``dnntool param-count`` and ``flops`` as whole processes on big zoo nets.

For each net and command it measures, in the same run:

* the whole command as a user runs it (``python -m dnntool ...``, table output to a pipe),
* baseline A: a bare Python start (``python -c pass``),
* baseline B: the bare protobuf text parse of the same prototxt in a fresh process (the least any
  Caffe-prototxt tool must do),
* the time that same command spends importing modules (``python -X importtime``),

and prints the medians and the ratio of the command to baseline B.

Usage: python benchmarks/analysis.py [--repeat 7] [--zoo ../shared/zoo]
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys

from common import timed, zoo_args  # benchmarks/common.py

NETS = {
    "ResNet-152": "resnet/prototxt/ResNet-152-deploy.prototxt",
    "GoogLeNet": "bvlc/models/bvlc_googlenet/deploy.prototxt",
}
PARSE_ONLY = (
    "import sys; from google.protobuf import text_format; from dnntool.proto import caffe_pb2;"
    " text_format.Parse(open(sys.argv[1]).read(), caffe_pb2.NetParameter())"
)

def import_seconds(args: list[str], repeat: int) -> float:
    """Median time the command spends importing modules (``-X importtime``, top-level entries summed)."""
    samples = []
    for _ in range(repeat):
        err = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True,
                             text=True, check=True).stderr
        total = 0
        for line in err.splitlines():
            m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S.*)$", line)
            if m and not m.group(2).startswith(" "):
                total += int(m.group(1))
        samples.append(total / 1e6)
    return statistics.median(samples)


def main() -> int:
    args, zoo = zoo_args(__doc__, 7)
    if zoo is None:
        return 2
    py = sys.executable
    start = timed([py, "-c", "pass"], args.repeat)
    print(f"python start (baseline A): {start * 1000:.0f} ms")
    print(f"{'net':<11} {'command':<12} {'whole':>8} {'imports':>8} {'parse B':>8} {'whole/B':>8} {'< 1 s':>6}")
    for name, rel in NETS.items():
        path = str(zoo / rel)
        parse = timed([py, "-c", PARSE_ONLY, path], args.repeat)
        for command in ("param-count", "flops"):
            whole = timed([py, "-m", "dnntool", command, path], args.repeat)
            imports = import_seconds(["-m", "dnntool", command, path], max(3, args.repeat // 2))
            print(f"{name:<11} {command:<12} {whole * 1000:>6.0f}ms {imports * 1000:>6.0f}ms"
                  f" {parse * 1000:>6.0f}ms {whole / parse:>7.2f}x {'yes' if whole < 1 else 'NO':>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
