"""Net -> display graph: a node per layer, in-place layers folded into the node they modify.

Netscope's convention: a layer whose top repeats its bottom (ReLU, BatchNorm, Scale, Dropout run in
place) is drawn inside the box of the layer that produced the blob, listed after it. Edges join the
node that produced a blob to each node that reads it, one edge per (blob, reader), carrying the
blob's shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dnntool.net import Layer, Net
from dnntool.net.net import format_shape

#: colour families of the drawing (``LayerDef.family``), with the legend's words.
FAMILIES: dict[str, str] = {
    "data": "data",
    "conv": "convolution",
    "pool": "pooling",
    "activation": "activation",
    "norm": "normalisation",
    "ip": "inner product",
    "merge": "concat / eltwise",
    "reshape": "reshape / slice",
    "loss": "loss / metric",
    "detection": "detection",
    "other": "other",
}


@dataclass
class Node:
    """A box of the drawing: its main layer first, then the in-place layers folded into it."""

    id: int
    layers: list[Layer]
    #: blobs leaving the node (SSA ids), one per top of the main layer, updated by folded layers.
    ports: list[str] = field(default_factory=list)

    @property
    def main(self) -> Layer:
        return self.layers[0]

    @property
    def name(self) -> str:
        return self.main.name

    @property
    def family(self) -> str:
        fam = self.main.impl.family
        return fam if fam in FAMILIES else "other"

    def lines(self) -> list[str]:
        """The text of the box: name, type with key parameters, then ``+ the folded layers' types``."""
        out = [self.name, _describe(self.main)]
        if len(self.layers) > 1:
            out.append("+ " + ", ".join(la.type for la in self.layers[1:]))
        return out


@dataclass(frozen=True)
class Edge:
    """A blob read by a node: from ``src``'s output ``port`` to ``dst``."""

    src: int
    port: int
    dst: int
    blob: str  # SSA id of the value read
    name: str  # Caffe blob name
    shape: tuple[int, ...]

    @property
    def label(self) -> str:
        return format_shape(self.shape)


@dataclass
class DisplayGraph:
    """What is drawn: nodes in layer order and edges in reading order."""

    net: Net
    nodes: list[Node]
    edges: list[Edge]
    node_of_layer: dict[str, int]
    merged: bool

    def port_shape(self, node: int, port: int) -> tuple[int, ...]:
        return self.net.blobs[self.nodes[node].ports[port]].shape

    def outputs(self) -> list[tuple[int, int]]:
        """(node, port) of blobs that no node reads (the net's outputs, drawn as stubs)."""
        read = {(e.src, e.port) for e in self.edges}
        return [(n.id, k) for n in self.nodes for k, bid in enumerate(n.ports)
                if (n.id, k) not in read and not bid.startswith("(automatic)")
                and not self.net.blobs[bid].consumers]


def _describe(layer: Layer) -> str:
    summary = layer.impl.summary()
    return f"{layer.type} {summary}" if summary else layer.type


def _foldable(layer: Layer) -> bool:
    """In place on its single bottom: Caffe's ReLU/BatchNorm/Scale/Dropout with top == bottom."""
    return (len(layer.bottoms) == 1 and len(layer.tops) == 1
            and layer.top_names[0] == layer.bottom_names[0])


def build_graph(net: Net, merge_inplace: bool = True) -> DisplayGraph:
    """The display graph of a built net (``merge_inplace=False``: one node per layer)."""
    nodes: list[Node] = []
    edges: list[Edge] = []
    seen: set[tuple[int, int, int]] = set()
    where: dict[str, tuple[int, int]] = {}  # SSA id -> (node, port)
    node_of_layer: dict[str, int] = {}
    for layer in net.layers:
        if merge_inplace and _foldable(layer) and layer.bottoms[0] in where:
            nid, port = where[layer.bottoms[0]]
            nodes[nid].layers.append(layer)
            nodes[nid].ports[port] = layer.tops[0]
            where[layer.tops[0]] = (nid, port)
            node_of_layer[layer.name] = nid
            continue
        node = Node(len(nodes), [layer], list(layer.tops))
        nodes.append(node)
        node_of_layer[layer.name] = node.id
        for bid in layer.bottoms:
            src = where.get(bid)
            if src is None or (src[0], src[1], node.id) in seen:
                continue
            seen.add((src[0], src[1], node.id))
            blob = net.blobs[bid]
            edges.append(Edge(src[0], src[1], node.id, bid, blob.name, blob.shape))
        for k, tid in enumerate(layer.tops):
            where[tid] = (node.id, k)
    return DisplayGraph(net, nodes, edges, node_of_layer, merge_inplace)
