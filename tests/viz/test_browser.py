"""The netscope page in a real browser: headless Chromium (Debian's, driven by playwright).

Every layer name is on the page, clicking a node shows its details, the search box finds a layer,
wheel and drag pan and zoom, the text fits the boxes, and the console stays free of errors. The
screenshots are kept in the test's tmp dir. ``.ci/run`` installs chromium and playwright; without
them the test is skipped.
"""

from __future__ import annotations

import os
import shutil

import pytest

from dnntool.net import Net
from dnntool.samples import sample
from dnntool.tools.stats import report
from dnntool.viz import render
from dnntool.viz.graph import build_graph
from tests.zoo import zoo_dir

CHROMIUM = os.environ.get("DNNTOOL_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
if not (os.path.exists(CHROMIUM) or shutil.which(CHROMIUM)):
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def nets():
    out = [pytest.param(str(sample("small_resnet_v1.prototxt")), "conv1", "prob", id="small-resnet-v1")]
    zoo = zoo_dir()
    if zoo is not None:
        out.append(pytest.param(str(zoo / "bvlc/models/bvlc_googlenet/deploy.prototxt"), "conv1/7x7_s2",
                                "inception_5b/pool_proj", id="googlenet"))
        out.append(pytest.param(str(zoo / "resnet/prototxt/ResNet-152-deploy.prototxt"), "conv1",
                                "res5c_branch2b", id="resnet-152"))
    return out


def transform(page) -> str:
    return page.get_attribute("#viewport", "transform")


@pytest.mark.parametrize("path,first,deep", nets())
def test_page_in_chromium(browser, tmp_path, path, first, deep):
    net = Net.from_prototxt(path)
    graph = build_graph(net)
    rows = {r.name: r for r in report(net).rows}
    html = tmp_path / "net.html"
    html.write_bytes(render(net, "html"))
    errors: list[str] = []
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(20_000)
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on("request", lambda r: errors.append(f"request {r.url}") if not r.url.startswith(("file:", "data:")) else None)
    page.goto(html.as_uri())
    page.wait_for_selector("#graph g.node")

    # every layer name is on the page, in the drawing (box text or box tooltip)
    drawing = page.text_content("#graph")
    missing = [la.name for la in net.layers if la.name not in drawing]
    assert not missing, missing

    # the text fits its box in this browser's fonts
    overflow = page.evaluate("""() => {
        const out = [];
        document.querySelectorAll('#graph g.node').forEach(g => {
            const w = g.querySelector('rect').getBBox().width;
            g.querySelectorAll('text').forEach(t => {
                if (t.getComputedTextLength() > w - 2) out.push(t.textContent);
            });
        });
        return out;
    }""")
    assert not overflow, overflow

    # click a node near the top: the details panel shows its parameters, shape, params and MACs
    nid = graph.node_of_layer[first]
    layer = net.layer(first)
    page.click(f"#n{nid}")
    assert "selected" in page.get_attribute(f"#n{nid}", "class")
    details = page.inner_text("#details-body")
    assert page.inner_text("#details-title").startswith(first)
    assert f'name: "{first}"' in details  # its prototxt text
    assert "num_output:" in details
    assert "x".join(map(str, layer.top_shapes[0])) in details
    assert f"{rows[first].params:,}" in details and f"{rows[first].macs:,}" in details
    page.screenshot(path=str(tmp_path / "clicked.png"))

    # the totals table
    totals = page.inner_text("#totals")
    assert f"{report(net).params:,}" in totals and f"{report(net).macs:,}" in totals

    # search: typing an exact layer name selects it and brings it into view
    before = transform(page)
    page.fill("#search", deep)
    did = graph.node_of_layer[deep]
    page.wait_for_selector(f"#n{did}.selected")
    assert page.inner_text("#details-title").startswith(graph.nodes[did].name)
    assert deep in page.inner_text("#details-body")
    assert "match" in page.inner_text("#search-info") or "/" in page.inner_text("#search-info")
    assert transform(page) != before or len(graph.nodes) < 12
    box, canvas = page.locator(f"#n{did}").bounding_box(), page.locator("#canvas").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    assert canvas["x"] <= cx <= canvas["x"] + canvas["width"] and canvas["y"] <= cy <= canvas["y"] + canvas["height"]
    page.screenshot(path=str(tmp_path / "search.png"))

    # a partial query highlights several nodes; Escape clears it
    page.fill("#search", first[:2])
    assert page.locator("#graph g.node.match").count() >= 1
    page.press("#search", "Escape")
    assert page.locator("#graph g.node.match").count() == 0
    assert page.locator("#graph g.node.selected").count() == 0

    # wheel zooms around the pointer, drag pans
    mx, my = canvas["x"] + canvas["width"] / 2, canvas["y"] + canvas["height"] / 2
    page.mouse.move(mx, my)
    t0 = transform(page)
    page.mouse.wheel(0, -300)
    page.wait_for_function(f"document.getElementById('viewport').getAttribute('transform') !== {t0!r}")
    t1 = transform(page)
    scale = lambda t: float(t.split("scale(")[1].rstrip(")"))  # noqa: E731
    assert scale(t1) > scale(t0)
    page.mouse.down()
    page.mouse.move(mx + 120, my + 80, steps=5)
    page.mouse.up()
    t2 = transform(page)
    assert t2 != t1 and scale(t2) == scale(t1)
    assert page.locator("#graph g.node.selected").count() == 0  # a drag is not a click

    # hover shows a node's details without selecting it
    page.click("#fit")
    page.hover(f"#n{nid}")
    assert page.inner_text("#details-title").startswith(first)
    page.screenshot(path=str(tmp_path / "page.png"))
    page.close()
    assert not errors, errors
