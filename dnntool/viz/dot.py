"""The display graph as Graphviz DOT text (for users who have graphviz; we never run it)."""

from __future__ import annotations

from dnntool.viz.graph import DisplayGraph
from dnntool.viz.scene import COLOURS, EDGE_COLOUR, LABEL_COLOUR
from dnntool.viz.svg import node_title


def quote(text: str) -> str:
    """A DOT double-quoted string; newlines become DOT's centred-line escape ``\\n``."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def render_dot(graph: DisplayGraph, rankdir: str = "TB") -> str:
    """DOT for ``dot -Tsvg``: the same nodes, colours, labels and edge shapes as our drawing."""
    out = [
        f"digraph {quote(graph.net.name or 'net')} {{",
        f"  rankdir={rankdir.upper()};",
        "  ranksep=0.35;",
        "  nodesep=0.25;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10, penwidth=1];',
        f'  edge [fontname="Helvetica", fontsize=8, color="{EDGE_COLOUR}", fontcolor="{LABEL_COLOUR}"];',
    ]
    for node in graph.nodes:
        fill, stroke = COLOURS[node.family]
        out.append(f"  n{node.id} [label={quote(chr(10).join(node.lines()))}, fillcolor=\"{fill}\","
                   f" color=\"{stroke}\", tooltip={quote(node_title(graph, node.id))}];")
    for e in graph.edges:
        out.append(f"  n{e.src} -> n{e.dst} [label={quote(e.label)}];")
    out.append("}")
    return "\n".join(out) + "\n"
