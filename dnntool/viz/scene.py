"""The drawing shared by every renderer: node boxes sized from their text, routed edges, labels.

Text is measured with Helvetica/Arial advance widths (Liberation Sans has the same metrics) plus a
margin for wider fallback fonts, so boxes fit their text in a browser without measuring it there.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

from dnntool.net.net import format_shape
from dnntool.viz.graph import DisplayGraph, Edge
from dnntool.viz.layout import Box, Layout, Point, layout

FONT_FAMILY = "'Liberation Sans', Arial, Helvetica, sans-serif"
NAME_SIZE, BODY_SIZE, LABEL_SIZE = 12.0, 11.0, 10.0
LINE_GAP = 3.0
PAD_X, PAD_Y = 9.0, 6.0

#: fill and border colour of each family (netscope-like pastels: convolution red, pooling orange,
#: inner product purple, concat/eltwise blue, loss yellow).
COLOURS: dict[str, tuple[str, str]] = {
    "data": ("#a8e0b4", "#3f8f56"),
    "conv": ("#f6a6a0", "#b8463d"),
    "pool": ("#fcc98b", "#bf7a1d"),
    "activation": ("#d7ecb0", "#6e8f35"),
    "norm": ("#c9bce8", "#6a55a8"),
    "ip": ("#e2b3ea", "#8e3fa0"),
    "merge": ("#a9d0f5", "#3a77b5"),
    "reshape": ("#dfe3e6", "#7b868f"),
    "loss": ("#fbe89a", "#a68b12"),
    "detection": ("#a3dbd4", "#2f8a7e"),
    "other": ("#e6e6e6", "#888888"),
}
EDGE_COLOUR, LABEL_COLOUR, TEXT_COLOUR = "#7a7f87", "#4b5058", "#1d2126"

# Helvetica advance widths (1/1000 em) for ASCII 32..126; other characters count as 0.6 em.
_WIDTHS = [
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278,
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556,
    1015, 667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833, 722, 778,
    667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278, 278, 278, 469, 556,
    333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556,
    556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584,
]


def text_width(text: str, size: float, bold: bool = False) -> float:
    """Estimated advance width of ``text`` at ``size`` px (bold adds ~8 %; +6 % for fallbacks)."""
    units = sum(_WIDTHS[o - 32] if 32 <= (o := ord(c)) < 127 else 600 for c in text)
    return units * size / 1000 * (1.14 if bold else 1.06)


@dataclass
class NodeView:
    """A drawn node: its box, text lines and colours."""

    id: int
    box: Box
    lines: list[str]
    family: str
    fill: str
    stroke: str


@dataclass
class EdgeView:
    """A drawn edge: its route (see ``layout.Route``) and the display-graph edge it draws."""

    edge: Edge
    points: list[Point]


@dataclass
class Label:
    """A blob-shape label, drawn once per output port (beside its stem)."""

    text: str
    x: float
    y: float  # baseline
    node: int
    port: int


@dataclass
class Stub:
    """An output blob nobody reads: a short line out of the node, with its label."""

    start: Point
    end: Point


@dataclass
class Scene:
    """Everything a renderer needs, in pixels."""

    graph: DisplayGraph
    layout: Layout
    nodes: list[NodeView]
    edges: list[EdgeView]
    labels: list[Label]
    stubs: list[Stub]
    rankdir: str
    width: float  # the layout's extent, grown to hold every label
    height: float


def line_sizes(i: int) -> tuple[float, bool]:
    """Font size and weight of a node's i-th text line."""
    return (NAME_SIZE, True) if i == 0 else (BODY_SIZE, False)


def node_size(lines: list[str]) -> tuple[float, float]:
    w = max(text_width(t, *line_sizes(i)) for i, t in enumerate(lines))
    h = sum(line_sizes(i)[0] for i in range(len(lines))) + LINE_GAP * (len(lines) - 1)
    return round(w + 2 * PAD_X, 1), round(h + 2 * PAD_Y + 2, 1)


def build_scene(graph: DisplayGraph, rankdir: str = "TB") -> Scene:
    """Measure, lay out and route the display graph."""
    rankdir = rankdir.upper()
    texts = [n.lines() for n in graph.nodes]
    sizes = [node_size(t) for t in texts]
    ports = [max(1, len(n.ports)) for n in graph.nodes]
    ledges = [(e.src, e.dst, (e.port + 1) / (ports[e.src] + 1)) for e in graph.edges]
    label_w = max((text_width(e.label, LABEL_SIZE) for e in graph.edges), default=40.0)
    if rankdir == "TB":
        gap, stem = 46.0, 15.0
    else:  # the label sits above a horizontal stem that must be as long as the label
        stem = round(label_w + 8, 1)
        gap = stem + 40.0
    lay = layout(sizes, ledges, rankdir, rank_gap=gap, stem=stem)
    nodes = [NodeView(n.id, lay.boxes[n.id], texts[n.id], n.family, *COLOURS[n.family]) for n in graph.nodes]
    edges = [EdgeView(e, r.points) for e, r in zip(graph.edges, lay.routes, strict=True)]
    stubs: list[Stub] = []
    wanted: list[tuple[str, Point, int, int]] = []  # (text, port point, node, port)
    done: set[tuple[int, int]] = set()
    for ev in edges:
        e = ev.edge
        if (e.src, e.port) in done or len(ev.points) < 2:
            continue
        done.add((e.src, e.port))
        wanted.append((e.label, _port_point(lay.boxes[e.src], e.port, ports[e.src], rankdir), e.src, e.port))
    for nid, port in graph.outputs():
        start = _port_point(lay.boxes[nid], port, ports[nid], rankdir)
        reach = lay.gap_starts[lay.ranks[nid]] + stem
        stubs.append(Stub(start, (start[0], reach) if rankdir == "TB" else (reach, start[1])))
        wanted.append((format_shape(graph.port_shape(nid, port)), start, nid, port))
    labels = _place_labels(wanted, lay, edges, stubs, rankdir)
    width = max([lay.width, *(lb.x + text_width(lb.text, LABEL_SIZE) + 4 for lb in labels)])
    height = max([lay.height, *(lb.y + 4 for lb in labels)])
    return Scene(graph, lay, nodes, edges, labels, stubs, rankdir, round(width, 1), round(height, 1))


class _Grid:
    """Rectangles bucketed in square cells, for cheap overlap queries."""

    CELL = 64.0

    def __init__(self) -> None:
        self.cells: dict[tuple[int, int], list[tuple[float, float, float, float, object]]] = {}

    def _keys(self, x0: float, y0: float, x1: float, y1: float):
        c = self.CELL
        for i in range(int(x0 // c), int(x1 // c) + 1):
            for j in range(int(y0 // c), int(y1 // c) + 1):
                yield i, j

    def add(self, x0: float, y0: float, x1: float, y1: float, tag: object = None) -> None:
        for k in self._keys(x0, y0, x1, y1):
            self.cells.setdefault(k, []).append((x0, y0, x1, y1, tag))

    def hits(self, x0: float, y0: float, x1: float, y1: float, skip: object = None) -> int:
        found = set()
        for k in self._keys(x0, y0, x1, y1):
            for r in self.cells.get(k, ()):
                if (skip is None or r[4] != skip) and r[0] < x1 and x0 < r[2] and r[1] < y1 and y0 < r[3]:
                    found.add(id(r))
        return len(found)


def _flatten(points: list[Point], rankdir: str) -> list[Point]:
    out = [points[0]]
    for op, pts in segments(points, rankdir):
        if op == "L":
            out.append(pts[0])
            continue
        (x0, y0), (ax, ay), (bx, by), (x1, y1) = out[-1], *pts
        for i in range(1, 7):
            t = i / 6
            a, b, c, d = (1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t * t * (1 - t), t**3
            out.append((a * x0 + b * ax + c * bx + d * x1, a * y0 + b * ay + c * by + d * y1))
    return out


def _place_labels(wanted: list[tuple[str, Point, int, int]], lay: Layout, edges: list[EdgeView],
                  stubs: list[Stub], rankdir: str) -> list[Label]:
    """Each shape label beside its stem, on the side where it covers no edge, box or other label."""
    grid = _Grid()
    for b in lay.boxes:
        grid.add(b.x, b.y, b.x + b.w, b.y + b.h)
    for ev in edges:
        if len(ev.points) < 2:
            continue
        tag = (ev.edge.src, ev.edge.port)
        pts = _flatten(ev.points, rankdir)
        for (x0, y0), (x1, y1) in pairwise(pts):
            grid.add(min(x0, x1) - 1, min(y0, y1) - 1, max(x0, x1) + 1, max(y0, y1) + 1, tag)
    for st in stubs:
        (x0, y0), (x1, y1) = st.start, st.end
        grid.add(min(x0, x1) - 1, min(y0, y1) - 1, max(x0, x1) + 1, max(y0, y1) + 1)
    labels = []
    for text, port, node, k in wanted:
        w = text_width(text, LABEL_SIZE)
        gap_start = lay.gap_starts[lay.ranks[node]]
        if rankdir == "TB":
            base = gap_start + LABEL_SIZE + 1
            cands = [(port[0] + 4, base), (port[0] - 4 - w, base)]
        else:
            cands = [(gap_start + 4, port[1] - 4), (gap_start + 4, port[1] + LABEL_SIZE + 2)]
        best, best_hits = cands[0], None
        for x, y in cands:
            if x < 2:  # would leave the picture
                continue
            n = grid.hits(x, y - 0.8 * LABEL_SIZE, x + w, y + 0.25 * LABEL_SIZE, skip=(node, k))
            if best_hits is None or n < best_hits:
                best, best_hits = (x, y), n
            if n == 0:
                break
        x, y = best
        grid.add(x, y - 0.8 * LABEL_SIZE, x + w, y + 0.25 * LABEL_SIZE, (node, k))
        labels.append(Label(text, round(x, 1), round(y, 1), node, k))
    return labels


def _port_point(box: Box, port: int, nports: int, rankdir: str) -> Point:
    f = (port + 1) / (nports + 1)
    if rankdir == "TB":
        return (box.x + box.w * f, box.y + box.h)
    return (box.x + box.w, box.y + box.h * f)


def segments(points: list[Point], rankdir: str) -> list[tuple[str, tuple[Point, ...]]]:
    """Drawing commands for a route: ``("L", (p,))`` straight, ``("C", (c1, c2, p))`` a curve.

    A gap crossing (the across-rank coordinate changes) is a cubic whose control points sit half
    way across the gap, so it leaves and arrives along the rank axis and stays inside the gap.
    """
    out: list[tuple[str, tuple[Point, ...]]] = []
    for (x0, y0), (x1, y1) in pairwise(points):
        if rankdir == "TB":
            if abs(x1 - x0) < 0.05:
                out.append(("L", ((x1, y1),)))
            else:
                ym = (y0 + y1) / 2
                out.append(("C", ((x0, ym), (x1, ym), (x1, y1))))
        elif abs(y1 - y0) < 0.05:
            out.append(("L", ((x1, y1),)))
        else:
            xm = (x0 + x1) / 2
            out.append(("C", ((xm, y0), (xm, y1), (x1, y1))))
    return out
