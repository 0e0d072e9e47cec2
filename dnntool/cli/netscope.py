"""``dnntool netscope``."""

from __future__ import annotations

import re
from pathlib import Path

import click

from dnntool.cli._options import input_shape_option, load_net, phase_option, stage_options


def default_output(net_name: str, source: str) -> str:
    """``<net name>.html`` in the current directory (the prototxt's stem when the net has no name)."""
    stem = re.sub(r"[^A-Za-z0-9._+-]+", "_", net_name).strip("._") or Path(source).stem or "net"
    return f"{stem}.html"


@click.command("netscope")
@click.argument("net", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Output file; the suffix picks the format: .html (default <net name>.html), .svg,"
                   " .dot or .png.")
@input_shape_option
@phase_option
@stage_options
@click.option("--rankdir", type=click.Choice(["TB", "LR"], case_sensitive=False), default="TB",
              show_default=True, help="Direction of the data flow: top to bottom or left to right.")
@click.option("--no-merge-inplace", "no_merge", is_flag=True,
              help="Draw in-place layers (ReLU, BatchNorm, Scale, Dropout) as nodes of their own.")
def cli(net, output, input_shapes, phase, stages, level, rankdir, no_merge):
    """Draw a net, offline, with shapes and costs (like the netscope web page).

    The layout is computed here (no graphviz, no network). HTML is one self-contained
    page: pan and zoom, hover or click a node for its prototxt, shapes, params and MACs,
    a totals table and a search box. SVG is the same drawing, static; DOT is for graphviz
    users; PNG is drawn without a browser. In-place layers are folded into the node they
    modify, as netscope does. The output is written atomically.

    \b
    Example:
      dnntool netscope ResNet-50-deploy.prototxt            # -> ResNet-50.html
      dnntool netscope deploy.prototxt -o net.svg --rankdir LR
      dnntool netscope train_val.prototxt --phase train -o train.png
    """
    from dnntool.viz import format_of, write

    if output is not None:
        format_of(output)  # a bad suffix is a usage error before any work
    n = load_net(net, phase, stages, level, input_shapes)
    output = output or default_output(n.name, net)
    write(n, output, rankdir.upper(), merge_inplace=not no_merge)
    click.echo(f"wrote {output} ({len(n.layers)} layers)", err=True)
