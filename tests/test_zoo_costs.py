"""Conformance: param-count and flops over every net prototxt of the real-world zoo.

Each file gives a report; where a data layer's source is absent, the command fails with a one-line
error asking for ``--input-shape``, and with the shapes it asks for it gives a report.
"""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from dnntool.cli import cli
from tests.zoo import zoo_dir

ZOO = zoo_dir()
pytestmark = pytest.mark.skipif(ZOO is None, reason="../shared/zoo is absent")

# Not nets: a label map, and SSD generator templates whose num_output holds placeholders (cls3x).
NOT_NETS = {"mobilenet_ssd/create_lmdb/code/labelmap.prototxt"}
TEMPLATES = re.compile(r"mobilenet_ssd/template/")
# Genuinely broken files (netscope renders them anyway): the error must name the fault.
BROKEN = {
    "netscope/dgschwend/presets/fcn-16s.prototxt": "unknown bottom blob 'score-pool4c'",
    "zynqnet/prototxt_models/fcn-16s.prototxt": "unknown bottom blob 'score-pool4c'",
    # netscope presets whose SoftmaxWithLoss has no label bottom (Caffe refuses them too)
    "netscope/dgschwend/presets/inceptionv3.prototxt": "(SoftmaxWithLoss): takes 2 bottom blob(s), got 1",
    "netscope/dgschwend/presets/inceptionv3_orig.prototxt": "(SoftmaxWithLoss): takes 2 bottom blob(s), got 1",
    "netscope/dgschwend/presets/inceptionv4_resnet.prototxt": "(SoftmaxWithLoss): takes 2 bottom blob(s), got 1",
    "zynqnet/prototxt_models/inceptionv3.prototxt": "(SoftmaxWithLoss): takes 2 bottom blob(s), got 1",
    "zynqnet/prototxt_models/inceptionv3_orig.prototxt": "(SoftmaxWithLoss): takes 2 bottom blob(s), got 1",
    "zynqnet/prototxt_models/inceptionv4_resnet.prototxt": "(SoftmaxWithLoss): takes 2 bottom blob(s), got 1",
    "netscope/dgschwend/presets/inceptionv4.prototxt": "(SoftmaxWithLoss): takes 2 bottom blob(s), got 1",
    "zynqnet/prototxt_models/inceptionv4.prototxt": "(SoftmaxWithLoss): takes 2 bottom blob(s), got 1",
}
# Placeholder fills: the first candidate whose report builds is taken.
CANDIDATES = [
    {"data": "1,3,224,224", "label": "1", "im_info": "1,3", "gt_boxes": "1,5"},
    {"data": "1,3,500,500", "label": "1,1,500,500", "sem": "1,1,500,500", "geo": "1,1,500,500",
     "color": "1,3,500,500", "depth": "1,1,500,500", "hha": "1,3,500,500"},
    {"data": "1,1,28,28", "label": "1"},
    {"data": "1,4", "label": "1"},
    {"data": "1,3,299,299", "label": "1"},
    {"pair_data": "64,2,28,28", "sim": "64"},
]
# Files whose inputs no generic guess fits (sizes worked out from the nets themselves).
OVERRIDES = {
    "opencv_contrib/modules/dnn_objdetect/samples/data/SqueezeDet_train_test.prototxt":
        {"data": "2,3,406,406", "bbox": "2,1,1,1"},
    "opencv_extra/testdata/dnn/layers/net_faster_rcnn_proposal.prototxt":
        {"rpn_cls_prob_reshape": "1,18,14,14", "rpn_bbox_pred": "1,36,14,14", "im_info": "1,3"},
    "opencv_extra/testdata/dnn/layers/reshape_and_slice_routines.prototxt": {"input": "1,3,4,4"},
}


def _asked(message: str) -> list[str]:
    return [n for n, _ in re.findall(r"--input-shape (\S+?)=(\S+)", message)]


def _fill(names: list[str], given: dict[str, str], rel: str, cand: dict[str, str]) -> dict[str, str]:
    out = dict(given)
    for name in names:
        out[name] = OVERRIDES.get(rel, {}).get(name) or cand.get(name) or (
            "1,3,224,224" if "data" in name else "1,1,1,1")
    return out


def _shape_args(shapes: dict[str, str]) -> list[str]:
    return [a for k, v in shapes.items() for a in ("--input-shape", f"{k}={v}")]


def _net_files():
    if ZOO is None:
        return []
    out = []
    for p in sorted(ZOO.rglob("*.prototxt")):
        rel = p.relative_to(ZOO).as_posix()
        text = p.read_text(errors="replace")
        if rel in NOT_NETS or re.search(r"^\s*(base_lr|train_net|net)\s*:", text, re.M):
            continue  # solvers and label maps
        out.append(rel)
    return out


def _run(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


@pytest.mark.parametrize("rel", _net_files())
@pytest.mark.parametrize("command", ["param-count", "flops"])
def test_every_zoo_net_reports(rel, command):
    path = str(ZOO / rel)
    args = [command, path, "--format", "json"]
    res = _run(args)
    if TEMPLATES.search(rel):
        assert res.exit_code == 1 and "Couldn't parse integer" in res.output
        return
    if res.exit_code == 1 and "(try --phase train)" in res.output:
        args += ["--phase", "train"]  # nets whose data layer exists only in TRAIN
        res = _run(args)
    first_err = res.output.strip() if res.exit_code == 1 else None
    if first_err is not None:
        assert "\n" not in first_err and first_err.startswith("Error: "), first_err
    if first_err is not None and "--input-shape" in first_err:
        for cand in CANDIDATES:  # ask, fill what is asked, repeat (several Input layers ask in turn)
            shapes: dict[str, str] = {}
            res = _run(args)
            for _ in range(8):
                if res.exit_code == 0 or "--input-shape" not in res.output:
                    break
                shapes = _fill(_asked(res.output), shapes, rel, cand)
                res = _run(args + _shape_args(shapes))
            if res.exit_code == 0 or (rel in BROKEN and BROKEN[rel] in res.output):
                break
    if rel in BROKEN:
        assert res.exit_code == 1 and BROKEN[rel] in res.output, res.output
        return
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["layers"], rel
    totals = report["totals"]
    assert totals["params"] >= 0 and totals["macs"] >= 0
    if command == "flops":
        assert totals["flops"] >= 2 * sum(r["macs"] for r in report["layers"] if r["type"] in ("Convolution", "InnerProduct"))
