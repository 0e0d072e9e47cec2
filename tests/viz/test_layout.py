"""Layout properties on real zoo nets and synthetic DAGs: no overlaps, edges clear of nodes, layering
follows the edges, crossing reduction never makes things worse."""

from __future__ import annotations

import random

import numpy as np
import pytest

from dnntool.net import Net
from dnntool.viz.graph import build_graph
from dnntool.viz.layout import Layout, layout
from dnntool.viz.scene import build_scene, segments
from tests.zoo import zoo_dir

ZOO_NETS = {
    "GoogLeNet": "bvlc/models/bvlc_googlenet/deploy.prototxt",
    "ResNet-152": "resnet/prototxt/ResNet-152-deploy.prototxt",
    "DenseNet-121": "densenet_caffe/DenseNet_121.prototxt",
}
EPS = 0.5  # touching a border is fine; entering a box by more than this is not


def boxes_array(lay: Layout) -> np.ndarray:
    return np.array([[b.x, b.y, b.x + b.w, b.y + b.h] for b in lay.boxes], dtype=float).reshape(-1, 4)


def assert_no_overlap(lay: Layout) -> None:
    a = boxes_array(lay)
    for i in range(len(a)):
        o = ((a[i, 0] < a[i + 1:, 2] - EPS) & (a[i + 1:, 0] < a[i, 2] - EPS)
             & (a[i, 1] < a[i + 1:, 3] - EPS) & (a[i + 1:, 1] < a[i, 3] - EPS))
        assert not o.any(), f"node {i} overlaps node {i + 1 + int(np.argmax(o))}"


def assert_edges_clear(lay: Layout, edges: list[tuple[int, int]]) -> None:
    """Every segment (for a curve: the box around it, which contains it) stays out of every node."""
    a = boxes_array(lay)
    for k, (r, (src, dst)) in enumerate(zip(lay.routes, edges, strict=True)):
        if src == dst:
            continue
        pts = r.points
        assert len(pts) >= 2, f"edge {k} has no route"
        sb, db = lay.boxes[src], lay.boxes[dst]
        assert _on_border(pts[0], sb), f"edge {k} does not start on its source's border"
        assert _on_border(pts[-1], db), f"edge {k} does not end on its target's border"
        prev = pts[0]
        for op, ctrl in segments(pts, lay.rankdir):
            hull = [prev, *ctrl]
            x0, x1 = min(p[0] for p in hull), max(p[0] for p in hull)
            y0, y1 = min(p[1] for p in hull), max(p[1] for p in hull)
            hit = (a[:, 0] + EPS < x1) & (x0 < a[:, 2] - EPS) & (a[:, 1] + EPS < y1) & (y0 < a[:, 3] - EPS)
            assert not hit.any(), (f"edge {k} ({src}->{dst}) segment {op} {prev}->{ctrl[-1]} passes"
                                   f" through node {int(np.argmax(hit))}")
            prev = ctrl[-1]


def _on_border(p, b) -> bool:
    inside = b.x - EPS <= p[0] <= b.x + b.w + EPS and b.y - EPS <= p[1] <= b.y + b.h + EPS
    on_edge = min(abs(p[0] - b.x), abs(p[0] - b.x - b.w), abs(p[1] - b.y), abs(p[1] - b.y - b.h)) <= EPS
    return inside and on_edge


def brute_crossings(lay: Layout) -> int:
    """Crossings recounted pair by pair from the final order (independent of the Fenwick count)."""
    pos = {v: (r, i) for r, layer in enumerate(lay.order) for i, v in enumerate(layer)}
    by_rank: dict[int, list[tuple[int, int]]] = {}
    for u, v in lay.links:
        by_rank.setdefault(pos[u][0], []).append((pos[u][1], pos[v][1]))
    c = 0
    for segs in by_rank.values():
        for i, (a1, b1) in enumerate(segs):
            for a2, b2 in segs[i + 1:]:
                c += (a1 - a2) * (b1 - b2) < 0
    return c


def check(lay: Layout, edges: list[tuple[int, int]], n: int) -> None:
    assert len(lay.boxes) == n
    assert_no_overlap(lay)
    assert_edges_clear(lay, edges)
    assert lay.crossings <= lay.crossings_before
    assert brute_crossings(lay) == lay.crossings
    rank_of = {v: r for r, layer in enumerate(lay.order) for v in layer}
    assert sorted(rank_of) == list(range(len(rank_of)))  # every node and dummy placed once
    for u, v in lay.links:  # long edges are split into links between adjacent ranks
        assert rank_of[u] + 1 == rank_of[v]
    for b in lay.boxes:
        assert b.x >= 0 and b.y >= 0 and b.x + b.w <= lay.width + EPS and b.y + b.h <= lay.height + EPS


# -- real nets ------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=sorted(ZOO_NETS))
def zoo_net(request):
    zoo = zoo_dir()
    if zoo is None:
        pytest.skip("zoo not available (../shared/zoo or $DNNTOOL_ZOO)")
    return request.param, Net.from_prototxt(zoo / ZOO_NETS[request.param])


@pytest.mark.parametrize("rankdir", ["TB", "LR"])
@pytest.mark.parametrize("merge", [True, False], ids=["merged", "unmerged"])
def test_zoo_layout_properties(zoo_net, rankdir, merge):
    name, net = zoo_net
    graph = build_graph(net, merge_inplace=merge)
    scene = build_scene(graph, rankdir)
    lay = scene.layout
    edges = [(e.src, e.dst) for e in graph.edges]
    check(lay, edges, len(graph.nodes))
    # every layer is drawn, in exactly one node
    drawn = [la.name for node in graph.nodes for la in node.layers]
    assert sorted(drawn) == sorted(la.name for la in net.layers)
    if not merge:
        assert len(graph.nodes) == len(net.layers)
    # the data flows down (TB) or right (LR): every edge goes to a later rank
    for e in graph.edges:
        assert lay.ranks[e.src] < lay.ranks[e.dst], (name, e)
        s, d = lay.boxes[e.src], lay.boxes[e.dst]
        assert (s.y + s.h <= d.y) if rankdir == "TB" else (s.x + s.w <= d.x)


def test_inplace_layers_fold_into_their_producer(zoo_net):
    name, net = zoo_net
    graph = build_graph(net)
    for node in graph.nodes:
        for la in node.layers[1:]:
            assert la.top_names == la.bottom_names, (name, la.name)
            assert la.type in {"ReLU", "BatchNorm", "Scale", "Dropout"}, la.type
    # folding leaves the drawing smaller but the edges still carry every blob read
    assert len(graph.nodes) < len(net.layers)
    if name == "ResNet-152":
        conv1 = graph.nodes[graph.node_of_layer["conv1"]]
        assert [la.name for la in conv1.layers] == ["conv1", "bn_conv1", "scale_conv1", "conv1_relu"]
        assert conv1.lines() == ["conv1", "Convolution 7x7 s2 p3, 64", "+ BatchNorm, Scale, ReLU"]


# -- synthetic DAGs -------------------------------------------------------------------------------
def random_dag(seed: int, n: int, p: float) -> tuple[list[tuple[float, float]], list[tuple[int, int, float]]]:
    rng = random.Random(seed)
    sizes = [(rng.choice([30, 60, 120, 200]), rng.choice([20, 34, 50])) for _ in range(n)]
    edges = []
    for b in range(1, n):
        for a in range(b):
            if rng.random() < p / (1 + (b - a) / 4):
                edges.append((a, b, rng.choice([0.25, 0.5, 0.75])))
    return sizes, edges


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("rankdir", ["TB", "LR"])
def test_random_dags(seed, rankdir):
    sizes, edges = random_dag(seed, 10 + 6 * seed, 0.45)
    lay = layout(sizes, edges, rankdir, stem=8)
    check(lay, [(a, b) for a, b, _ in edges], len(sizes))
    for a, b, _ in edges:
        assert lay.ranks[a] < lay.ranks[b]


def test_crossing_reduction_helps():
    # two sources each wired to the far end of the next rank: the DFS start order crosses
    sizes = [(40, 20)] * 8
    edges = [(0, 2), (0, 5), (1, 3), (1, 4), (2, 6), (3, 7), (4, 6), (5, 7), (0, 7), (1, 6)]
    lay = layout(sizes, edges)
    check(lay, edges, len(sizes))
    total = 0
    for seed in range(30):
        s, e = random_dag(100 + seed, 24, 0.6)
        lay = layout(s, e)
        assert lay.crossings <= lay.crossings_before
        total += lay.crossings_before - lay.crossings
    assert total > 0, "crossing reduction never removed a crossing on 30 random DAGs"


@pytest.mark.parametrize("sizes,edges", [
    ([], []),
    ([(50, 20)], []),
    ([(50, 20)] * 3, []),  # no edges: one rank, side by side
    ([(50, 20)] * 2, [(0, 1), (0, 1), (0, 1)]),  # parallel edges
    ([(50, 20)] * 3, [(0, 1), (1, 2), (2, 0)]),  # a cycle is broken, not fatal
    ([(50, 20)] * 2, [(0, 0), (0, 1)]),  # self-loop ignored
    ([(80, 30)] * 6, [(0, 5), (0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]),  # one long edge
])
def test_small_graphs(sizes, edges):
    lay = layout(sizes, edges)
    real = [(a, b) for a, b in edges if a != b]
    assert_no_overlap(lay)
    assert len(lay.routes) == len(edges)
    assert_edges_clear(lay, edges)
    for (a, b), r in zip(edges, lay.routes, strict=True):
        if a != b:
            assert (r.src, r.dst) == (a, b)
    if real and sizes:
        assert lay.width > 0 and lay.height > 0


def test_long_edge_runs_beside_the_chain():
    sizes = [(80, 30)] * 6
    edges = [(0, 5), (0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    lay = layout(sizes, edges)
    assert lay.ranks == [0, 1, 2, 3, 4, 5]
    long_route = lay.routes[0].points
    assert len(long_route) > 6  # through four dummies
    xs = {round(p[0]) for p in long_route[2:-2]}
    chain_x = {round(b.cx) for b in lay.boxes[1:5]}
    assert all(abs(x - c) > 40 for x in xs for c in chain_x)  # beside the boxes, not through them


def test_label_input_sits_above_its_reader():
    # data -> a -> b -> c -> loss, label -> loss: the label node is ranked next to the loss
    sizes = [(60, 20)] * 6
    edges = [(0, 1), (1, 2), (2, 3), (3, 4), (5, 4)]
    lay = layout(sizes, edges)
    assert lay.ranks[5] == lay.ranks[4] - 1


def test_layout_is_deterministic():
    sizes, edges = random_dag(7, 40, 0.5)
    a, b = layout(sizes, edges), layout(sizes, edges)
    assert a.boxes == b.boxes and [r.points for r in a.routes] == [r.points for r in b.routes]


def test_lr_is_tb_transposed():
    sizes, edges = random_dag(3, 20, 0.5)
    tb = layout(sizes, edges, "TB")
    lr = layout([(h, w) for w, h in sizes], edges, "LR")
    assert (tb.width, tb.height) == pytest.approx((lr.height, lr.width))
    for p, q in zip(tb.boxes, lr.boxes, strict=True):
        assert (p.x, p.y, p.w, p.h) == pytest.approx((q.y, q.x, q.h, q.w))


def test_bad_rankdir():
    with pytest.raises(ValueError, match="rankdir"):
        layout([(1, 1)], [], "BT")
