"""Drawing nets (``dnntool netscope``): display graph, layered layout, SVG/HTML/DOT/PNG renderers.

Everything is computed here, in Python: no graphviz binary, no browser, no network.
"""

from __future__ import annotations

import os
from pathlib import Path

from dnntool.errors import UsageError
from dnntool.net import Net

FORMATS = {".html": "html", ".htm": "html", ".svg": "svg", ".dot": "dot", ".gv": "dot", ".png": "png"}


def format_of(path: str | os.PathLike[str]) -> str:
    """The output format named by a file's suffix (``.html``, ``.svg``, ``.dot``/``.gv``, ``.png``)."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UsageError(f"cannot tell the output format of '{path}' from its suffix"
                         f" (expected .html, .svg, .dot or .png)")
    return FORMATS[suffix]


def render(net: Net, fmt: str = "html", rankdir: str = "TB", merge_inplace: bool = True) -> bytes:
    """The drawing of a built net as file contents: ``html``, ``svg``, ``dot`` or ``png``."""
    from dnntool.viz.graph import build_graph

    graph = build_graph(net, merge_inplace)
    if fmt == "dot":
        from dnntool.viz.dot import render_dot

        return render_dot(graph, rankdir).encode("utf-8")
    from dnntool.viz.scene import build_scene

    scene = build_scene(graph, rankdir)
    if fmt == "svg":
        from dnntool.viz.svg import render_svg

        return render_svg(scene).encode("utf-8")
    if fmt == "png":
        from dnntool.viz.png import render_png

        return render_png(scene)
    if fmt == "html":
        from dnntool.viz.html import render_html

        return render_html(scene).encode("utf-8")
    raise UsageError(f"unknown format '{fmt}' (expected html, svg, dot or png)")


def write(net: Net, path: str | os.PathLike[str], rankdir: str = "TB", merge_inplace: bool = True) -> str:
    """Render a net to ``path`` (format from its suffix), written atomically; returns the format."""
    from dnntool.io.atomic import write_bytes

    fmt = format_of(path)
    write_bytes(path, render(net, fmt, rankdir, merge_inplace))
    return fmt


__all__ = ["FORMATS", "format_of", "render", "write"]
