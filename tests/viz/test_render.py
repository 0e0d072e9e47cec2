"""Renderers: SVG parses and names every layer, DOT is well formed, PNG decodes at the expected size,
HTML is one self-contained file; every format is byte-for-byte deterministic."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest

from dnntool.errors import UsageError
from dnntool.net import Net
from dnntool.samples import sample
from dnntool.tools.stats import report
from dnntool.viz import format_of, render
from dnntool.viz.graph import build_graph
from dnntool.viz.png import png_size
from dnntool.viz.scene import build_scene
from tests.zoo import zoo_dir

SVG_NS = "{http://www.w3.org/2000/svg}"


def nets():
    out = [pytest.param(str(sample("lenet_deploy.prototxt")), id="lenet"),
           pytest.param(str(sample("small_resnet_v1.prototxt")), id="small-resnet-v1")]
    zoo = zoo_dir()
    if zoo is not None:
        out.append(pytest.param(str(zoo / "bvlc/models/bvlc_googlenet/deploy.prototxt"), id="googlenet"))
    return out


@pytest.fixture(scope="module", params=nets())
def net(request):
    return Net.from_prototxt(request.param)


def svg_text(root: ET.Element) -> str:
    return "\n".join(t for t in root.itertext())


@pytest.mark.parametrize("rankdir", ["TB", "LR"])
def test_svg_parses_and_names_every_layer(net, rankdir):
    data = render(net, "svg", rankdir)
    root = ET.fromstring(data)
    assert root.tag == f"{SVG_NS}svg"
    text = svg_text(root)
    for layer in net.layers:
        assert layer.name in text, layer.name
    nodes = [g for g in root.iter(f"{SVG_NS}g") if "node" in g.get("class", "").split()]
    assert len(nodes) == len(build_graph(net).nodes)
    w, h = float(root.get("width")), float(root.get("height"))
    assert root.get("viewBox") == f"0 0 {root.get('width')} {root.get('height')}"
    for rect in root.iter(f"{SVG_NS}rect"):
        assert float(rect.get("x", 0)) + float(rect.get("width")) <= w + 0.5
        assert float(rect.get("y", 0)) + float(rect.get("height")) <= h + 0.5
    # edges carry blob shapes
    labels = [t.text for g in root.iter(f"{SVG_NS}g") if g.get("class") == "labels" for t in g]
    shapes = {"x".join(map(str, b.shape)) for b in net.blobs.values()}
    assert labels and all(lb in shapes for lb in labels)


@pytest.mark.parametrize("rankdir", ["TB", "LR"])
def test_labels_inside_the_picture(net, rankdir):
    from dnntool.viz.scene import LABEL_SIZE, text_width

    scene = build_scene(build_graph(net), rankdir)
    assert len(scene.labels) == len({(e.src, e.port) for e in scene.graph.edges}) + len(scene.stubs)
    for lb in scene.labels:
        assert lb.x >= 0 and lb.x + text_width(lb.text, LABEL_SIZE) <= scene.width
        assert lb.y - LABEL_SIZE >= 0 and lb.y <= scene.height


def test_svg_node_shows_key_parameters(net):
    root = ET.fromstring(render(net, "svg"))
    graph = build_graph(net)
    for node in graph.nodes:
        g = root.find(f".//{SVG_NS}g[@id='n{node.id}']")
        texts = [t.text for t in g.findall(f"{SVG_NS}text")]
        assert texts == node.lines()
        assert node.family in g.get("class")


def test_no_merge_draws_every_layer_as_a_node(net):
    root = ET.fromstring(render(net, "svg", merge_inplace=False))
    nodes = [g for g in root.iter(f"{SVG_NS}g") if "node" in g.get("class", "").split()]
    assert len(nodes) == len(net.layers)


_DOT_STMT = re.compile(
    r'^\s*(?:'
    r'(?:rankdir|ranksep|nodesep)=[\w.]+;'
    r'|(?:node|edge) \[.*\];'
    r'|n\d+ \[label=".*", fillcolor="#[0-9a-f]{6}", color="#[0-9a-f]{6}", tooltip=".*"\];'
    r'|n\d+ -> n\d+ \[label=".*"\];'
    r')$'
)


def dot_strings_ok(line: str) -> bool:
    """Every double-quoted string closes, with only \\\\, \\" and \\n escapes inside."""
    return re.fullmatch(r'(?:[^"\\]|"(?:[^"\\]|\\[\\"n])*")*', line) is not None


def test_dot_syntax(net):
    dot = render(net, "dot", "LR").decode()
    lines = dot.rstrip("\n").split("\n")
    assert re.fullmatch(r'digraph "(?:[^"\\]|\\.)*" \{', lines[0])
    assert lines[-1] == "}"
    assert "  rankdir=LR;" in lines
    for line in lines[1:-1]:
        assert _DOT_STMT.match(line), line
        assert dot_strings_ok(line), line
    graph = build_graph(net)
    assert sum(" -> " in line for line in lines) == len(graph.edges)
    for layer in net.layers:
        assert layer.name in dot


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz not installed (optional check)")
def test_dot_runs_through_graphviz(net, tmp_path):
    out = subprocess.run(["dot", "-Tsvg"], input=render(net, "dot"), capture_output=True, check=True)
    ET.fromstring(out.stdout)


def test_dot_quotes_odd_names():
    from dnntool.viz.dot import quote

    assert quote('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'


@pytest.mark.parametrize("rankdir", ["TB", "LR"])
def test_png_decodes_at_the_expected_size(net, rankdir):
    data = render(net, "png", rankdir)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    scene = build_scene(build_graph(net), rankdir)
    w, h = png_size(scene)
    assert img.shape == (h, w, 3)
    assert (img < 250).any() and (img == 255).all(axis=2).mean() > 0.3  # something drawn on white
    # node fills are present in the picture (conv red for any net with a convolution)
    if any(la.impl.family == "conv" for la in net.layers):
        assert (np.abs(img.astype(int) - [160, 166, 246]).sum(axis=2) < 12).any()


def test_png_scale_is_capped_for_huge_drawings():
    from dnntool.viz.png import MAX_PIXELS, MAX_SIDE, png_scale

    assert png_scale(500, 20000) == pytest.approx(MAX_SIDE / 20000)
    s = png_scale(20000, 20000)
    assert 20000 * 20000 * s * s <= MAX_PIXELS * 1.0001


def test_html_is_self_contained(net):
    page = render(net, "html").decode()
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"https?://", page), "the page references the network"
    assert not re.search(r"(?<![\w-])src\s*=", page), "the page loads a file"
    for href in re.findall(r'href="([^"]*)"', page):
        assert href.startswith(("data:", "#")), href
    assert "<svg" in page and "xmlns" not in page  # inline SVG needs no namespace URL
    for layer in net.layers:
        assert layer.name in page
    blob = re.search(r'<script type="application/json" id="netscope-data">(.*?)</script>', page, re.S)
    data = json.loads(blob.group(1))
    graph = build_graph(net)
    assert len(data["nodes"]) == len(graph.nodes)
    names = [la["name"] for n in data["nodes"] for la in n["layers"]]
    assert sorted(names) == sorted(la.name for la in net.layers)
    first = data["nodes"][0]["layers"][0]
    assert first["proto"].startswith("layer {") and f'name: "{net.layers[0].name}"' in first["proto"]


def test_html_totals_come_from_the_stats_report(net):
    page = render(net, "html").decode()
    rep = report(net)
    totals = re.search(r'<table class="kv totals" id="totals">(.*?)</table>', page, re.S).group(1)
    assert f"{rep.params:,}" in totals and f"{rep.macs:,}" in totals and f"{rep.flops:,}" in totals
    data = json.loads(re.search(r'id="netscope-data">(.*?)</script>', page, re.S).group(1))
    rows = {r.name: r for r in rep.rows}
    for node in data["nodes"]:
        for la in node["layers"]:
            assert la["params"].split(" ")[0] == f"{rows[la['name']].params:,}"
            assert la["macs"].split(" ")[0] == f"{rows[la['name']].macs:,}"


@pytest.mark.parametrize("fmt", ["html", "svg", "dot", "png"])
def test_deterministic(net, fmt):
    assert render(net, fmt) == render(net, fmt)


def test_names_are_escaped(tmp_path):
    proto = tmp_path / "odd.prototxt"
    proto.write_text(
        'name: "a<b>&\\"c"\n'
        'layer { name: "in<put>" type: "Input" top: "x&y" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'
        'layer { name: "</script><b>" type: "ReLU" bottom: "x&y" top: "z" }\n'
    )
    net = Net.from_prototxt(proto)
    ET.fromstring(render(net, "svg"))
    page = render(net, "html").decode()
    assert "</script><b>" not in page.split('id="netscope-data">', 1)[1].split("</script>", 1)[0]
    dot = render(net, "dot").decode()
    assert all(dot_strings_ok(line) for line in dot.splitlines())


def test_format_of():
    assert [format_of(p) for p in ("a.html", "b.HTM", "c.svg", "d.dot", "e.gv", "f.png")] == [
        "html", "html", "svg", "dot", "dot", "png"]
    with pytest.raises(UsageError, match=r"\.pdf"):
        format_of("net.pdf")
