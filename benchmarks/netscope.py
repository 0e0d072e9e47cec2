"""Benchmark: ``dnntool netscope`` as a whole process on ResNet-152 (and GoogLeNet, DenseNet-121).

For each net it measures, in the same run:

* baseline: ``dnntool param-count NET`` (start Python, parse the prototxt, build the net, count),
* ``dnntool netscope NET -o out.{html,svg,png,dot}`` (the same, plus graph, layout and rendering),

and prints the medians, the ratio of each to the baseline and whether it is under 2 s (the target
for ResNet-152 HTML).

Usage: python benchmarks/netscope.py [--repeat 5] [--zoo ../shared/zoo]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from common import timed, zoo_args  # benchmarks/common.py

NETS = {
    "ResNet-152": "resnet/prototxt/ResNet-152-deploy.prototxt",
    "GoogLeNet": "bvlc/models/bvlc_googlenet/deploy.prototxt",
    "DenseNet-121": "densenet_caffe/DenseNet_121.prototxt",
}
FORMATS = ("html", "svg", "png", "dot")



def main() -> int:
    args, zoo = zoo_args(__doc__, 5)
    if zoo is None:
        return 2
    py = sys.executable
    print(f"{'net':<13} {'command':<18} {'median':>8} {'/base':>7} {'size':>9} {'< 2 s':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, rel in NETS.items():
            path = str(zoo / rel)
            base = timed([py, "-m", "dnntool", "param-count", path], args.repeat)
            print(f"{name:<13} {'param-count (base)':<18} {base * 1000:>6.0f}ms {1:>6.2f}x {'':>9} {'':>6}")
            for fmt in FORMATS:
                out = Path(tmp) / f"out.{fmt}"
                t = timed([py, "-m", "dnntool", "netscope", path, "-o", str(out)], args.repeat)
                size = out.stat().st_size
                print(f"{name:<13} {'netscope .' + fmt:<18} {t * 1000:>6.0f}ms {t / base:>6.2f}x"
                      f" {size / 1024:>7.0f}KB {'yes' if t < 2 else 'NO':>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
