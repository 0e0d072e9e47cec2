"""The demo pipeline on bundled samples: the library half of ``dnntool demo``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from dnntool.errors import ThresholdExceeded
from dnntool.io.atomic import write_text
from dnntool.io.prototxt import read_net, write_prototxt
from dnntool.net import Net
from dnntool.samples import sample
from dnntool.tools.stats import human, report


def run_demo(out_dir: str, echo: Callable[[str], None] = print) -> dict:
    """Upgrade the V1 sample, report params/MACs of each net, check CI-style limits; return artifacts."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    artifacts: list[str] = []

    upgraded = out / "small_resnet.prototxt"
    src = read_net(sample("small_resnet_v1.prototxt"))
    write_prototxt(src.param, upgraded)
    artifacts.append(str(upgraded))
    echo(f"upgrade-net: {sample('small_resnet_v1.prototxt').name} -> {upgraded} ({'; '.join(src.notes)})")

    limits = {"params": 1_000_000, "macs": 50_000_000}
    rows = []
    for name, path in (("lenet", sample("lenet_deploy.prototxt")), ("small_resnet", upgraded)):
        net = Net.from_prototxt(path)
        rep = report(net)
        rep_path = out / f"{name}.costs.json"
        write_text(rep_path, json.dumps(rep.to_dict(), indent=2) + "\n")
        artifacts.append(str(rep_path))
        for what, value in (("params", rep.params), ("macs", rep.macs)):
            if value > limits[what]:
                raise ThresholdExceeded(f"{path}: {what} {value:,} exceed the demo limit {limits[what]:,}")
        rows.append((name, rep.params, rep.macs, rep.flops))
        echo(f"param-count/flops: {name}: {rep.params:,} params, {human(rep.macs)} MACs,"
             f" {human(rep.flops)} FLOPs (--max {human(limits['params'])} params,"
             f" {human(limits['macs'])} MACs: ok)")
    return {"artifacts": artifacts, "models": rows}
