"""``dnntool decompose``."""

from __future__ import annotations

import click

from dnntool.cli._options import (
    echo_report,
    model_arguments,
    parse_input_shapes,
    report_options,
)


@click.command("decompose")
@model_arguments
@click.option("-o", "--output", "prefix", required=True, metavar="PREFIX",
              help="Write PREFIX.prototxt and PREFIX.caffemodel.")
@click.option("--layers", required=True, metavar="NAME,...", help="InnerProduct layers to decompose.")
@click.option("--rank", type=click.IntRange(min=1), help="Keep this many singular values.")
@click.option("--energy", type=float, help="Keep the smallest rank holding this fraction of sum(s^2).")
@report_options
def cli(net, weights, prefix, layers, rank, energy, input_shapes, batches, repeat, timing_db, device, as_json):
    """Split InnerProduct layers by truncated SVD into two smaller ones (compress_net).

    W (N x K) ~ U_r S_r V_r^T: NAME_L (K -> r, no bias) gets S_r V_r^T and NAME_U (r -> N) gets
    U_r and the bias; the prototxt is rewritten (the top keeps its name). The report gives each
    layer's rank, energy kept and weight error, params before and after, and the error measured
    at the layer's top and the net's outputs on the timed batches.

    \b
    Example:
      dnntool decompose VGG16_deploy.prototxt VGG16.caffemodel --layers fc6,fc7 --rank 256 -o vgg16_svd
      dnntool decompose deploy.prototxt w.caffemodel --layers fc6 --energy 0.9 -o fc6_svd --db val_lmdb
    """
    from dnntool.slim.decompose import decompose_files

    names = [v.strip() for v in layers.split(",") if v.strip()]
    rep = decompose_files(net, weights, prefix, names, rank, energy, parse_input_shapes(input_shapes), batches,
                          timing_db, device, repeat)
    echo_report(rep, as_json)
