"""Layered DAG layout (Sugiyama's method), pure Python, no graphviz.

1. Layering: longest path from the sources, then each node slides to the rank between its
   neighbours that shortens its edges (a greedy step toward network simplex's optimum), so a label
   input sits just above the loss that reads it.
2. Long edges get a dummy node on every rank they cross, so they are routed between the nodes.
3. Crossing reduction: DFS initial order, barycenter sweeps down and up with adjacent-swap
   (transpose) passes; the order with the fewest crossings is kept (never worse than the start).
4. Coordinates along the ranks: each sweep places a rank at the weighted mean of its neighbours,
   solved exactly under the minimum-separation constraints (pool-adjacent-violators); edges between
   dummies weigh most, so long edges run straight.
5. Routing: every edge runs vertically through the rank bands (at its port, its dummies' positions
   and its target's port) and crosses the gaps between bands, where no node is, as a curve; so no
   edge passes through a node.

Coordinates are computed along abstract axes (u across ranks, v along them) and mapped to x/y by
``rankdir`` (TB: ranks go down; LR: ranks go right).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from dnntool.viz.ordering import CrossingReduction

Point = tuple[float, float]


@dataclass(frozen=True)
class Box:
    """A node's rectangle in the final coordinates (top-left corner, size)."""

    x: float
    y: float
    w: float
    h: float

    @property
    def cx(self) -> float:
        return self.x + self.w / 2

    @property
    def cy(self) -> float:
        return self.y + self.h / 2


@dataclass
class Route:
    """The path of one edge, from its source port to its target's border, in final coordinates.

    Consecutive points either share the u coordinate (a straight run through a rank band, or a
    stem) or lie on the two borders of a gap between bands (drawn as a curve inside that gap).
    """

    src: int
    dst: int
    points: list[Point]


@dataclass
class Layout:
    """Result of :func:`layout`."""

    rankdir: str
    boxes: list[Box]
    routes: list[Route]
    ranks: list[int]  # rank of each node
    order: list[list[int]]  # node ids (dummies >= number of nodes) per rank, in order
    width: float
    height: float
    crossings_before: int
    crossings: int
    gap_starts: list[float]  # v coordinate where the gap after each rank begins (band's far border)
    links: list[tuple[int, int]]  # edges between adjacent ranks (through the dummies), upper end first


# spacing (px) between neighbours on a rank: real/real, real/dummy, dummy/dummy; dummy width
NODE_SEP, MIXED_SEP, DUMMY_SEP, DUMMY_W = 22.0, 12.0, 8.0, 2.0
MARGIN = 16.0


def layout(
    sizes: Sequence[tuple[float, float]],
    edges: Sequence[tuple[int, int]] | Sequence[tuple[int, int, float]],
    rankdir: str = "TB",
    rank_gap: float = 40.0,
    stem: float = 0.0,
    end_gap: float | None = None,
) -> Layout:
    """Lay out a DAG.

    Args:
        sizes: (width, height) of each node in final coordinates.
        edges: (src, dst) or (src, dst, port): port in (0, 1) is where along the source's border
            the edge leaves (0.5, the middle, by default). Self-loops are ignored; a cycle is
            broken by reversing the edges that go against the nodes' index order.
        rankdir: ``TB`` (ranks top to bottom) or ``LR`` (left to right).
        rank_gap: space between two rank bands.
        stem: length of the straight run each edge makes into the gap before it curves.
        end_gap: space after the last band (for output stubs); ``rank_gap`` by default.

    Returns:
        Boxes for the nodes, a route per edge (in the order given), and the layering.
    """
    if rankdir not in ("TB", "LR"):
        raise ValueError(f"rankdir must be TB or LR, not {rankdir!r}")
    n = len(sizes)
    tb = rankdir == "TB"
    su = [float(w if tb else h) for w, h in sizes]  # size across the ranks
    sv = [float(h if tb else w) for w, h in sizes]  # size along the rank axis
    norm = [(int(e[0]), int(e[1]), float(e[2]) if len(e) > 2 else 0.5) for e in edges]  # type: ignore[misc]
    g = _Graph(n, norm, su, sv)
    g.rank_nodes()
    g.add_dummies()
    before = g.total_crossings()
    g.reduce_crossings()
    after = g.total_crossings()
    g.assign_u()
    vpos, gap_starts, total_v = g.assign_v(rank_gap, rank_gap if end_gap is None else end_gap)
    routes = g.route(vpos, gap_starts, stem)
    total_u = max((g.x[v] + g.su[v] / 2 for v in range(len(g.su))), default=0.0) + MARGIN
    boxes = []
    for v in range(n):
        u0, v0 = g.x[v] - su[v] / 2, vpos[v] - sv[v] / 2
        boxes.append(Box(u0, v0, su[v], sv[v]) if tb else Box(v0, u0, sv[v], su[v]))
    if not tb:
        routes = [Route(r.src, r.dst, [(b, a) for a, b in r.points]) for r in routes]
    return Layout(
        rankdir=rankdir, boxes=boxes, routes=routes, ranks=g.rank[:n], order=g.layers,
        width=total_u if tb else total_v, height=total_v if tb else total_u,
        crossings_before=before, crossings=after, gap_starts=gap_starts,
        links=[(c[i], c[i + 1]) for c in g.chains for i in range(len(c) - 1)],
    )


class _Graph(CrossingReduction):
    """Working state: nodes 0..n-1 are real, the rest dummies."""

    def __init__(self, n: int, edges: list[tuple[int, int, float]], su: list[float], sv: list[float]):
        self.n = n
        self.su = list(su)
        self.sv = list(sv)
        self.edges: list[tuple[int, int, float, bool]] = []  # (a, b, port, reversed) with a before b
        order = _topo_order(n, [(a, b) for a, b, _ in edges if a != b])
        for a, b, p in edges:
            if a == b or order[a] < order[b]:
                self.edges.append((a, b, p, False))
            else:
                self.edges.append((b, a, 0.5, True))
        self.topo = sorted(range(n), key=order.__getitem__)
        self.rank: list[int] = [0] * n
        self.chains: list[list[int]] = []
        self.layers: list[list[int]] = []
        self.x: list[float] = []
        # neighbours on the rank above / below: (node, weight, port offset of the upper end)
        self.up: list[list[tuple[int, float, float]]] = []
        self.down: list[list[tuple[int, float, float]]] = []

    # -- 1. layering ------------------------------------------------------------------------
    def rank_nodes(self) -> None:
        preds: list[list[int]] = [[] for _ in range(self.n)]
        succs: list[list[int]] = [[] for _ in range(self.n)]
        for a, b, _, _ in self.edges:
            if a != b:
                succs[a].append(b)
                preds[b].append(a)
        rank = self.rank
        for v in self.topo:
            rank[v] = max((rank[u] + 1 for u in preds[v]), default=0)
        # Greedy balancing: a node with more edges below than above moves down as far as its
        # successors allow, and the reverse; repeated until stable (total edge length only falls).
        for _ in range(8):
            changed = False
            for v in reversed(self.topo):
                lo = max((rank[u] + 1 for u in preds[v]), default=None)
                hi = min((rank[w] - 1 for w in succs[v]), default=None)
                nin, nout = len(preds[v]), len(succs[v])
                if nout > nin and hi is not None and hi > rank[v]:
                    rank[v], changed = hi, True
                elif nin > nout and lo is not None and lo < rank[v]:
                    rank[v], changed = lo, True
            if not changed:
                break
        low = min(rank, default=0)
        for v in range(self.n):
            rank[v] -= low

    # -- 2. dummies -------------------------------------------------------------------------
    def add_dummies(self) -> None:
        nranks = max(self.rank, default=-1) + 1
        self.layers = [[] for _ in range(nranks)]
        self.up = [[] for _ in range(self.n)]
        self.down = [[] for _ in range(self.n)]
        outdeg, indeg = [0] * self.n, [0] * self.n
        for a, b, _, _ in self.edges:
            if a != b:
                outdeg[a] += 1
                indeg[b] += 1
        for a, b, port, _ in self.edges:
            if a == b:
                self.chains.append([a])
                continue
            chain = [a]
            for r in range(self.rank[a] + 1, self.rank[b]):
                d = len(self.su)
                self.su.append(DUMMY_W)
                self.sv.append(0.0)
                self.rank.append(r)
                self.up.append([])
                self.down.append([])
                chain.append(d)
            chain.append(b)
            self.chains.append(chain)
            for i in range(len(chain) - 1):
                p, q = chain[i], chain[i + 1]
                dummies = (p >= self.n) + (q >= self.n)
                w = (1.0, 2.0, 8.0)[dummies]
                if not dummies and outdeg[p] == 1 and indeg[q] == 1:
                    w = 4.0  # a plain chain a -> b: keep it straight
                off = (port - 0.5) * self.su[a] if i == 0 else 0.0
                self.down[p].append((q, w, off))
                self.up[q].append((p, w, off))
        self._init_order()

    def _init_order(self) -> None:
        """DFS from the sources in topological order: chains and branches start out together."""
        seen = [False] * len(self.su)
        layers = self.layers
        for s in self.topo:
            if seen[s]:
                continue
            stack = [s]
            while stack:
                v = stack.pop()
                if seen[v]:
                    continue
                seen[v] = True
                layers[self.rank[v]].append(v)
                stack.extend(q for q, _, _ in reversed(self.down[v]) if not seen[q])

    # -- 4. coordinates across the ranks ----------------------------------------------------
    def _sep(self, a: int, b: int) -> float:
        dummies = (a >= self.n) + (b >= self.n)
        return (self.su[a] + self.su[b]) / 2 + (NODE_SEP, MIXED_SEP, DUMMY_SEP)[dummies]

    def assign_u(self) -> None:
        x = [0.0] * len(self.su)
        for layer in self.layers:
            at = 0.0
            for i, v in enumerate(layer):
                if i:
                    at += self._sep(layer[i - 1], v)
                x[v] = at
            for v in layer:
                x[v] -= at / 2
        self.x = x
        seps = [[self._sep(layer[i], layer[i + 1]) for i in range(len(layer) - 1)] for layer in self.layers]
        nr = len(self.layers)
        plan = ["down", "up"] * 6 + ["both"] * 4
        for mode in plan:
            ranks = range(nr) if mode != "up" else range(nr - 1, -1, -1)
            for r in ranks:
                layer = self.layers[r]
                want, weight = [], []
                for v in layer:
                    t = wt = 0.0
                    if mode != "up":
                        for q, w, off in self.up[v]:
                            t += w * (x[q] + off)
                            wt += w
                    if mode != "down":
                        for q, w, off in self.down[v]:
                            t += w * (x[q] - off)
                            wt += w
                    if wt:
                        want.append(t / wt)
                        weight.append(wt)
                    else:
                        want.append(x[v])
                        weight.append(1e-3)
                for v, xv in zip(layer, _place(want, weight, seps[r]), strict=True):
                    x[v] = xv
        low = min((x[v] - self.su[v] / 2 for v in range(len(self.su))), default=0.0)
        for v in range(len(x)):
            x[v] += MARGIN - low

    # -- 5. coordinates along the ranks and routes ------------------------------------------
    def assign_v(self, gap: float, end_gap: float) -> tuple[list[float], list[float], float]:
        vpos = [0.0] * len(self.su)
        at = MARGIN
        gap_starts = []
        for layer in self.layers:
            band = max((self.sv[v] for v in layer), default=0.0)
            for v in layer:
                vpos[v] = at + band / 2
            at += band
            gap_starts.append(at)
            at += gap
        total = (at - gap if self.layers else at) + end_gap
        return vpos, gap_starts, total

    def route(self, vpos: list[float], gap_starts: list[float], stem: float) -> list[Route]:
        band_top = [gs - max((self.sv[v] for v in layer), default=0.0)
                    for gs, layer in zip(gap_starts, self.layers, strict=True)]
        x = self.x
        # spread the edges arriving at a node along its border, in the order of where they come from
        incoming: dict[int, list[tuple[float, int]]] = {}
        for k, chain in enumerate(self.chains):
            if len(chain) > 1:
                prev = chain[-2]
                px = x[prev] + ((self.edges[k][2] - 0.5) * self.su[prev] if len(chain) == 2 else 0.0)
                incoming.setdefault(chain[-1], []).append((px, k))
        end_u: dict[int, float] = {}
        for v, lst in incoming.items():
            lst.sort()
            m = len(lst)
            spread = min(self.su[v] * 0.5, 10.0 * (m - 1))
            for j, (_, k) in enumerate(lst):
                end_u[k] = x[v] + (spread * (j / (m - 1) - 0.5) if m > 1 else 0.0)
        routes = []
        for k, chain in enumerate(self.chains):
            a, b, port, rev = self.edges[k]
            if len(chain) == 1:  # self-loop: nothing to draw
                routes.append(Route(a, b, []))
                continue
            pu = x[a] + (port - 0.5) * self.su[a]
            ra = self.rank[a]
            pts: list[Point] = [(pu, vpos[a] + self.sv[a] / 2), (pu, gap_starts[ra])]
            if stem:
                pts.append((pu, gap_starts[ra] + stem))
            for d in chain[1:-1]:
                rd = self.rank[d]
                pts += [(x[d], band_top[rd]), (x[d], gap_starts[rd])]
                if stem:
                    pts.append((x[d], gap_starts[rd] + stem))
            tu = end_u[k]
            pts += [(tu, band_top[self.rank[b]]), (tu, vpos[b] - self.sv[b] / 2)]
            pts = _dedupe(pts)
            if rev:
                pts.reverse()
            routes.append(Route(b if rev else a, a if rev else b, pts))
        return routes


def _dedupe(pts: list[Point]) -> list[Point]:
    out = [pts[0]]
    for p in pts[1:]:
        if abs(p[0] - out[-1][0]) > 1e-9 or abs(p[1] - out[-1][1]) > 1e-9:
            out.append(p)
    return out


def _place(want: list[float], weight: list[float], seps: list[float]) -> list[float]:
    """Positions closest to ``want`` (weighted least squares) with x[i+1] - x[i] >= seps[i].

    Substituting y_i = x_i - S_i (S the prefix sums of seps) turns it into isotonic regression,
    solved exactly by pool-adjacent-violators in linear time.
    """
    offs = [0.0]
    for s in seps:
        offs.append(offs[-1] + s)
    blocks: list[list[float]] = []  # [sum of weights, weighted sum, count]
    for t, w, s in zip(want, weight, offs, strict=True):
        blocks.append([w, w * (t - s), 1])
        while len(blocks) > 1 and blocks[-2][1] * blocks[-1][0] >= blocks[-1][1] * blocks[-2][0]:
            w2, t2, c2 = blocks.pop()
            blocks[-1][0] += w2
            blocks[-1][1] += t2
            blocks[-1][2] += c2
    out = []
    for w, t, c in blocks:
        out.extend([t / w] * int(c))
    return [y + s for y, s in zip(out, offs, strict=True)]


def _topo_order(n: int, edges: list[tuple[int, int]]) -> list[int]:
    """Position of each node in a topological order, smallest index first among the ready ones.

    A cycle is broken at its smallest-index node (its remaining in-edges then point backwards).
    """
    indeg = [0] * n
    succs: list[list[int]] = [[] for _ in range(n)]
    for a, b in edges:
        succs[a].append(b)
        indeg[b] += 1
    ready = [v for v in range(n) if indeg[v] == 0]
    heapq.heapify(ready)
    order = [-1] * n
    done = 0
    pending = list(range(n))  # for cycle breaking, in index order
    pi = 0
    while done < n:
        if not ready:
            while order[pending[pi]] >= 0:
                pi += 1
            ready.append(pending[pi])
        v = heapq.heappop(ready)
        if order[v] >= 0:
            continue
        order[v] = done
        done += 1
        for w in succs[v]:
            indeg[w] -= 1
            if indeg[w] == 0 and order[w] < 0:
                heapq.heappush(ready, w)
    return order

