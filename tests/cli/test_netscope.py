"""``dnntool netscope`` through the CLI: formats, default name, --rankdir, --no-merge-inplace, errors."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from dnntool.cli import cli
from dnntool.samples import sample

LENET = str(sample("lenet_deploy.prototxt"))
SMALL_RESNET = str(sample("small_resnet_v1.prototxt"))  # V1 file with in-place ReLU
SVG = "{http://www.w3.org/2000/svg}"


def run(*args):
    return CliRunner().invoke(cli, list(args))


def svg_nodes(path: Path) -> list[ET.Element]:
    root = ET.parse(path).getroot()
    return [g for g in root.iter(f"{SVG}g") if "node" in g.get("class", "").split()]


def test_default_output_is_net_name_html(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = run("netscope", LENET)
    assert res.exit_code == 0, res.output
    assert res.output == "wrote LeNet.html (9 layers)\n"
    page = (tmp_path / "LeNet.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "conv2" in page


@pytest.mark.parametrize("suffix,check", [
    (".html", lambda p: p.read_text().startswith("<!DOCTYPE html>")),
    (".svg", lambda p: ET.parse(p).getroot().tag == f"{SVG}svg"),
    (".dot", lambda p: p.read_text().startswith('digraph "LeNet" {')),
    (".gv", lambda p: p.read_text().startswith('digraph "LeNet" {')),
    (".png", lambda p: cv2.imdecode(np.fromfile(p, np.uint8), cv2.IMREAD_COLOR) is not None),
])
def test_formats_from_suffix(tmp_path, suffix, check):
    out = tmp_path / f"sub/lenet{suffix}"
    res = run("netscope", LENET, "-o", str(out))
    assert res.exit_code == 0, res.output
    assert check(out)
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary left behind


def test_same_input_same_bytes(tmp_path):
    for fmt in ("html", "svg", "png"):
        a, b = tmp_path / f"a.{fmt}", tmp_path / f"b.{fmt}"
        assert run("netscope", SMALL_RESNET, "-o", str(a)).exit_code == 0
        assert run("netscope", SMALL_RESNET, "-o", str(b)).exit_code == 0
        assert a.read_bytes() == b.read_bytes(), fmt


def test_rankdir(tmp_path):
    tb, lr = tmp_path / "tb.svg", tmp_path / "lr.svg"
    assert run("netscope", LENET, "-o", str(tb)).exit_code == 0
    assert run("netscope", LENET, "-o", str(lr), "--rankdir", "lr").exit_code == 0
    rt, rl = ET.parse(tb).getroot(), ET.parse(lr).getroot()
    assert float(rt.get("height")) > float(rt.get("width"))  # a chain: tall top to bottom
    assert float(rl.get("width")) > float(rl.get("height"))  # and wide left to right
    dot = tmp_path / "lr.dot"
    assert run("netscope", LENET, "-o", str(dot), "--rankdir", "LR").exit_code == 0
    assert "  rankdir=LR;" in dot.read_text().splitlines()


def test_no_merge_inplace(tmp_path):
    merged, unmerged = tmp_path / "m.svg", tmp_path / "u.svg"
    assert run("netscope", SMALL_RESNET, "-o", str(merged)).exit_code == 0
    assert run("netscope", SMALL_RESNET, "-o", str(unmerged), "--no-merge-inplace").exit_code == 0
    m, u = svg_nodes(merged), svg_nodes(unmerged)
    assert len(u) == 8  # input + the 7 layers
    assert len(m) == 7  # relu1 folded into conv1
    conv1 = next(g for g in m if g.find(f"{SVG}text").text == "conv1")
    assert [t.text for t in conv1.findall(f"{SVG}text")] == ["conv1", "Convolution 3x3 p1, 16", "+ ReLU"]


def test_phase_and_input_shape(tmp_path):
    out = tmp_path / "n.svg"
    res = run("netscope", LENET, "-o", str(out), "--input-shape", "data=4,1,28,28", "--phase", "train")
    assert res.exit_code == 0, res.output
    assert "4x1x28x28" in out.read_text()


def test_bad_suffix_is_usage_error(tmp_path):
    res = run("netscope", LENET, "-o", str(tmp_path / "net.pdf"))
    assert res.exit_code == 2
    assert res.output == (f"Error: cannot tell the output format of '{tmp_path / 'net.pdf'}' from its"
                          " suffix (expected .html, .svg, .dot or .png)\n")
    assert not (tmp_path / "net.pdf").exists()


@pytest.mark.parametrize("content,expect", [
    (None, "no such file (expected a net prototxt)"),
    (b"", "empty file (expected a net prototxt)"),
    (b"layer {\n  name: 'a'\n  type: 'Input'\n  top: 'a'\n  input_param { shape { dim: 1 } }\n}\nlayer {\n"
     b"  name: 'b'\n  type: 'Sigmoidd'\n  bottom: 'a'\n  top: 'b'\n}\n",
     "net.prototxt:7:1: layer 'b': unknown layer type 'Sigmoidd'; closest known types: Sigmoid"),
    (b"layer { name: 'a' type: 'ReLU' bottom: 'b' top: 'a' }\nlayer { name: 'b' type: 'ReLU' bottom: 'a' top: 'b' }\n",
     "net.prototxt:1:1: layer 'a' (ReLU): unknown bottom blob 'b' (bottom index 0); it is produced later by layer 'b'"),
    (b"layer {\n  name: 'a'\n  type: 'Input'\n  top: 'a'\n  input_param { shape { dim: 1 dim: 3 } }\n  kernal_size: 3\n}\n",
     "net.prototxt:6:3:"),
])
def test_bad_prototxt_one_line(tmp_path, content, expect):
    path = tmp_path / "net.prototxt"
    if content is not None:
        path.write_bytes(content)
    out = tmp_path / "out.html"
    res = run("netscope", str(path), "-o", str(out))
    assert res.exit_code == 1, res.output
    assert res.output.count("\n") == 1 and res.output.startswith("Error: "), res.output
    assert expect in res.output, res.output
    assert not out.exists()
    # the same message as the other commands give
    assert res.output == run("param-count", str(path)).output


def test_default_name_without_net_name(tmp_path):
    from dnntool.cli.netscope import default_output

    assert default_output("", "/x/deploy.prototxt") == "deploy.html"
    assert default_output("My Net/v2", "a.prototxt") == "My_Net_v2.html"
