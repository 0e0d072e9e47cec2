"""The netscope page: one self-contained HTML file with the drawing, details and totals.

The page holds the inline SVG drawing, a JSON block with each node's layers (prototxt text, blob
shapes, params, MACs, FLOPs from ``tools.stats.report``) and the script of ``_assets`` (pan/zoom,
hover/click details, search). It references nothing outside itself.
"""

from __future__ import annotations

import json
from html import escape

from google.protobuf import text_format

from dnntool.net.net import Layer, format_shape
from dnntool.tools.stats import Report, Row, human, report
from dnntool.viz._assets import CSS, JS
from dnntool.viz.graph import FAMILIES
from dnntool.viz.scene import COLOURS, FONT_FAMILY, Scene
from dnntool.viz.svg import drawing, num


def _count(n: int) -> str:
    """``1,234,567 (1.23M)``; small numbers plain."""
    return f"{n:,}" if n < 1000 else f"{n:,} ({human(n)})"


def prototxt(layer: Layer) -> str:
    """The layer's prototxt text, without weights."""
    lp = layer.param
    if lp.blobs:
        lp = type(lp)()
        lp.CopyFrom(layer.param)
        del lp.blobs[:]
    body = text_format.MessageToString(lp, as_utf8=True, indent=2)
    return "layer {\n" + body + "}"


def _layer_data(layer: Layer, row: Row) -> dict:
    return {
        "name": layer.name,
        "type": layer.type,
        "summary": layer.impl.summary(),
        "bottoms": [[n, format_shape(s)] for n, s in zip(layer.bottom_names, layer.bottom_shapes, strict=False)],
        "tops": [[n, format_shape(s)] for n, s in zip(layer.top_names, layer.top_shapes, strict=False)],
        "params": _count(row.params),
        "stored": _count(row.stored) if row.stored else "",
        "macs": _count(row.macs),
        "flops": _count(row.flops),
        "act": _count(row.activations),
        "proto": prototxt(layer),
    }


def page_data(scene: Scene, rep: Report) -> dict:
    """What the script reads: the drawing's size and, per node, its centre and layers."""
    rows = {id(la): row for la, row in zip(scene.graph.net.layers, rep.rows, strict=True)}
    nodes = []
    for nv in scene.nodes:
        layers = scene.graph.nodes[nv.id].layers
        nodes.append({
            "cx": round(nv.box.cx, 1), "cy": round(nv.box.cy, 1),
            "params": _count(sum(rows[id(la)].params for la in layers)),
            "macs": _count(sum(rows[id(la)].macs for la in layers)),
            "layers": [_layer_data(la, rows[id(la)]) for la in layers],
        })
    return {"width": round(scene.width, 1), "height": round(scene.height, 1), "nodes": nodes}


def _json_script(obj: dict) -> str:
    """JSON that cannot close its <script> element early."""
    text = json.dumps(obj, ensure_ascii=True, separators=(",", ":"), sort_keys=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def totals_table(rep: Report, scene: Scene) -> str:
    t = rep.totals()
    net = scene.graph.net
    rows = [
        ("layers", f"{len(net.layers):,} ({len(scene.nodes):,} boxes)"),
        ("learnable params", _count(t["params"])),
    ]
    if t["stored"]:
        rows.append(("stored values", _count(t["stored"])))
    rows += [("MACs", _count(t["macs"])), ("FLOPs", _count(t["flops"])),
             ("activations", _count(t["activations"]))]
    if rep.batch > 1:
        rows += [(f"{k} per image", _count(t[f"{k.lower()}_per_image"])) for k in ("MACs", "FLOPs")]
    inputs = [f"{n} {format_shape(s)}" for la in net.layers if la.impl.is_data
              for n, s in zip(la.top_names, la.top_shapes, strict=False)]
    if inputs:
        rows.append(("inputs", ", ".join(inputs)))
    body = "".join(f"<tr><th>{escape(k)}</th><td class=\"n\">{escape(v)}</td></tr>" for k, v in rows)
    return f"<table class=\"kv totals\" id=\"totals\">{body}</table>"


def by_type_table(rep: Report) -> str:
    agg: dict[str, list[int]] = {}
    for r in rep.rows:
        a = agg.setdefault(r.type, [0, 0, 0])
        a[0] += 1
        a[1] += r.params
        a[2] += r.macs
    total = rep.macs or 1
    lines = ["<table id=\"by-type\"><tr><th>type</th><th class=\"n\">layers</th><th class=\"n\">params</th>"
             "<th class=\"n\">MACs</th><th class=\"n\">%</th></tr>"]
    for typ, (n, p, m) in sorted(agg.items(), key=lambda kv: (-kv[1][2], -kv[1][1], kv[0])):
        lines.append(f"<tr><td>{escape(typ)}</td><td class=\"n\">{n}</td><td class=\"n\">{human(p)}</td>"
                     f"<td class=\"n\">{human(m)}</td><td class=\"n\">{100 * m / total:.1f}</td></tr>")
    lines.append("</table>")
    return "".join(lines)


def legend(scene: Scene) -> str:
    present = {nv.family for nv in scene.nodes}
    items = [f"<span><i style=\"background:{COLOURS[f][0]};border-color:{COLOURS[f][1]}\"></i>"
             f"{escape(words)}</span>" for f, words in FAMILIES.items() if f in present]
    return "<div class=\"legend\">" + "".join(items) + "</div>"


def render_html(scene: Scene) -> str:
    """The whole page."""
    net = scene.graph.net
    rep = report(net)
    name = net.name or "net"
    sub = " · ".join(filter(None, [net.source or "", f"phase {rep.phase}", f"{len(net.layers)} layers",
                                   f"{human(rep.params)} params", f"{human(rep.macs)} MACs"]))
    names = sorted({la.name for la in net.layers})
    options = "".join(f"<option value=\"{escape(n)}\"></option>" for n in names)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(name)} · dnntool netscope</title>
<link rel="icon" href="data:,">
<style>{CSS}</style>
</head>
<body>
<header>
<h1>{escape(name)}</h1>
<span class="sub">{escape(sub)}</span>
<input id="search" type="search" list="layer-names" placeholder="Find a layer ( / )" autocomplete="off">
<span id="search-info"></span>
<button id="fit" type="button" title="Fit the whole net (f)">Fit</button>
<button id="one" type="button" title="Full width, top of the net">Top</button>
</header>
<main>
<div id="canvas">
<svg id="graph" font-family="{escape(FONT_FAMILY)}" data-width="{num(scene.width)}" data-height="{num(scene.height)}">
<g id="viewport">
{drawing(scene)}
</g>
</svg>
</div>
<aside>
<details open><summary>Totals</summary>{totals_table(rep, scene)}</details>
<h2 id="details-title">Layer</h2>
<div id="details-body"></div>
<details><summary>By layer type</summary>{by_type_table(rep)}</details>
<details open><summary>Colours</summary>{legend(scene)}</details>
<p class="hint">Drag to pan, wheel to zoom; click a node to keep its details; / to search.</p>
</aside>
</main>
<datalist id="layer-names">{options}</datalist>
<script type="application/json" id="netscope-data">{_json_script(page_data(scene, rep))}</script>
<script>{JS}</script>
</body>
</html>
"""
