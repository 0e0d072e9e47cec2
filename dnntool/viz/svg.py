"""The scene as SVG: a standalone file, or the drawing the HTML page embeds."""

from __future__ import annotations

from html import escape

from dnntool.net.net import format_shape
from dnntool.viz.graph import DisplayGraph
from dnntool.viz.scene import (
    EDGE_COLOUR,
    FONT_FAMILY,
    LABEL_COLOUR,
    LABEL_SIZE,
    LINE_GAP,
    PAD_Y,
    TEXT_COLOUR,
    Point,
    Scene,
    line_sizes,
    segments,
)


def num(v: float) -> str:
    """A coordinate with at most one decimal (deterministic text)."""
    s = f"{v:.1f}"
    return s[:-2] if s.endswith(".0") else s


def path_d(points: list[Point], rankdir: str) -> str:
    (x, y), parts = points[0], []
    parts.append(f"M{num(x)},{num(y)}")
    for op, pts in segments(points, rankdir):
        parts.append(op + " ".join(f"{num(px)},{num(py)}" for px, py in pts))
    return "".join(parts)


def node_title(graph: DisplayGraph, nid: int) -> str:
    """Tooltip text: every layer of the node with its type and key parameters, then its outputs."""
    node = graph.nodes[nid]
    lines = []
    for layer in node.layers:
        summary = layer.impl.summary()
        lines.append(f"{layer.name}: {layer.type}" + (f" {summary}" if summary else ""))
    for bid in node.ports:
        blob = graph.net.blobs[bid]
        lines.append(f"→ {blob.name} {format_shape(blob.shape)}")
    return "\n".join(lines)


def drawing(scene: Scene) -> str:
    """The SVG elements of the drawing (markers, edges, labels, nodes), without the root element."""
    rd = scene.rankdir
    out = [
        "<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"9\""
        f" markerHeight=\"9\" markerUnits=\"userSpaceOnUse\" orient=\"auto\"><path d=\"M0,1L10,5L0,9z\" fill=\"{EDGE_COLOUR}\"/>"
        "</marker></defs>",
        f"<g class=\"edges\" fill=\"none\" stroke=\"{EDGE_COLOUR}\" stroke-width=\"1.3\">",
    ]
    for ev in scene.edges:
        if len(ev.points) < 2:
            continue
        e = ev.edge
        out.append(f"<path class=\"edge\" data-src=\"{e.src}\" data-dst=\"{e.dst}\""
                   f" d=\"{path_d(ev.points, rd)}\" marker-end=\"url(#arrow)\"/>")
    for st in scene.stubs:
        out.append(f"<path class=\"stub\" d=\"{path_d([st.start, st.end], rd)}\""
                   " stroke-dasharray=\"3,2\" marker-end=\"url(#arrow)\"/>")
    out.append("</g>")
    out.append(f"<g class=\"labels\" font-size=\"{num(LABEL_SIZE)}\" fill=\"{LABEL_COLOUR}\">")
    for lb in scene.labels:
        out.append(f"<text x=\"{num(lb.x)}\" y=\"{num(lb.y)}\">{escape(lb.text)}</text>")
    out.append("</g>")
    out.append(f"<g class=\"nodes\" fill=\"{TEXT_COLOUR}\" text-anchor=\"middle\">")
    for nv in scene.nodes:
        b = nv.box
        out.append(f"<g class=\"node {nv.family}\" id=\"n{nv.id}\" data-node=\"{nv.id}\">"
                   f"<title>{escape(node_title(scene.graph, nv.id))}</title>"
                   f"<rect x=\"{num(b.x)}\" y=\"{num(b.y)}\" width=\"{num(b.w)}\" height=\"{num(b.h)}\""
                   f" rx=\"5\" fill=\"{nv.fill}\" stroke=\"{nv.stroke}\"/>")
        top = b.y + PAD_Y + 1
        for i, text in enumerate(nv.lines):
            size, bold = line_sizes(i)
            weight = " font-weight=\"bold\"" if bold else ""
            out.append(f"<text x=\"{num(b.cx)}\" y=\"{num(top + 0.8 * size)}\" font-size=\"{num(size)}\"{weight}>"
                       f"{escape(text)}</text>")
            top += size + LINE_GAP
        out.append("</g>")
    out.append("</g>")
    return "\n".join(out)


def render_svg(scene: Scene) -> str:
    """A standalone SVG document of the scene."""
    w, h = num(scene.width), num(scene.height)
    name = escape(scene.graph.net.name or "net")
    return (
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        f"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\""
        f" font-family=\"{escape(FONT_FAMILY)}\">\n"
        f"<title>{name}</title>\n"
        f"<rect width=\"{w}\" height=\"{h}\" fill=\"#ffffff\"/>\n"
        f"{drawing(scene)}\n</svg>\n"
    )
