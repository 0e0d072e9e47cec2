"""Crossing reduction for the layered layout (step 3 of ``layout``).

Barycenter sweeps down and up the ranks, each followed by adjacent swaps (transpose) while they
remove crossings; the order with the fewest crossings seen is kept, so the result is never worse
than the DFS order it starts from. Crossings between two ranks are counted as inversions with a
Fenwick tree (Barth, Juenger and Mutzel), O(E log V).
"""

from __future__ import annotations


class CrossingReduction:
    """Mixed into the layout's working graph, which provides the attributes below."""

    layers: list[list[int]]  # node ids per rank, in order
    su: list[float]  # size of each node across the ranks
    # neighbours on the rank above / below: (node, weight, port offset of the upper end)
    up: list[list[tuple[int, float, float]]]
    down: list[list[tuple[int, float, float]]]

    def total_crossings(self) -> int:
        return sum(self._crossings(r) for r in range(len(self.layers) - 1))

    def _crossings(self, r: int) -> int:
        """Crossings between rank r and r+1 (inversions, counted with a Fenwick tree)."""
        lower = self.layers[r + 1]
        if len(self.layers[r]) < 2 and len(lower) < 2:
            return 0
        pos = {v: i for i, v in enumerate(lower)}
        pairs = sorted((i, pos[q]) for i, v in enumerate(self.layers[r]) for q, _, _ in self.down[v])
        size = len(lower) + 1
        tree = [0] * (size + 1)
        count = 0
        for seen, (_, j) in enumerate(pairs):
            # edges already added whose lower end is right of j cross this one
            k, le = j + 1, 0
            while k > 0:
                le += tree[k]
                k -= k & -k
            count += seen - le
            k = j + 1
            while k <= size:
                tree[k] += 1
                k += k & -k
        return count

    def reduce_crossings(self) -> None:
        best = [list(layer) for layer in self.layers]
        best_c = self.total_crossings()
        if best_c == 0:
            return
        stale = 0
        for it in range(24):
            self._sweep(down=it % 2 == 0)
            self._transpose()
            c = self.total_crossings()
            if c < best_c:
                best, best_c, stale = [list(layer) for layer in self.layers], c, 0
                if c == 0:
                    break
            else:
                stale += 1
                if stale >= 4:
                    break
        self.layers = best

    def _sweep(self, down: bool) -> None:
        ranks = range(1, len(self.layers)) if down else range(len(self.layers) - 2, -1, -1)
        for r in ranks:
            fixed = self.layers[r - 1] if down else self.layers[r + 1]
            pos = {v: i for i, v in enumerate(fixed)}
            layer = self.layers[r]
            bary: list[tuple[float, int, int] | None] = []
            for i, v in enumerate(layer):
                nbrs = self.up[v] if down else self.down[v]
                if not nbrs:
                    bary.append(None)
                    continue
                total = 0.0
                for q, _, off in nbrs:
                    # a multi-port source: its ports sit slightly apart, in port order
                    total += pos[q] + (off / (self.su[q] + 1.0) if down else 0.0)
                bary.append((total / len(nbrs), i, v))
            movable = sorted(b for b in bary if b is not None)
            it = iter(movable)
            self.layers[r] = [v if b is None else next(it)[2] for v, b in zip(layer, bary, strict=True)]

    def _transpose(self) -> None:
        """Swap adjacent nodes while that removes crossings with both neighbouring ranks."""
        for _ in range(4):
            improved = False
            for r, layer in enumerate(self.layers):
                if len(layer) < 2:
                    continue
                above = {v: i for i, v in enumerate(self.layers[r - 1])} if r > 0 else {}
                below = {v: i for i, v in enumerate(self.layers[r + 1])} if r + 1 < len(self.layers) else {}
                for i in range(len(layer) - 1):
                    v, w = layer[i], layer[i + 1]
                    if self._pair_cross(v, w, above, below) > self._pair_cross(w, v, above, below):
                        layer[i], layer[i + 1] = w, v
                        improved = True
            if not improved:
                break

    def _pair_cross(self, v: int, w: int, above: dict[int, int], below: dict[int, int]) -> int:
        """Crossings between the edges of v and w when v is left of w."""
        c = 0
        for nbrs_v, nbrs_w, pos in ((self.up[v], self.up[w], above), (self.down[v], self.down[w], below)):
            if not nbrs_v or not nbrs_w:
                continue
            pw = [pos[q] for q, _, _ in nbrs_w]
            for q, _, _ in nbrs_v:
                pv = pos[q]
                c += sum(1 for x in pw if x < pv)
        return c
