"""``dnntool fold-bn``."""

from __future__ import annotations

import click

from dnntool.cli._options import (
    echo_report,
    model_arguments,
    parse_input_shapes,
    report_options,
)


@click.command("fold-bn")
@model_arguments
@click.option("-o", "--output", "prefix", required=True, metavar="PREFIX",
              help="Write PREFIX.prototxt and PREFIX.caffemodel.")
@report_options
def cli(net, weights, prefix, input_shapes, batches, repeat, timing_db, device, as_json):
    """Fold BatchNorm (and the Scale after it) into the convolution or InnerProduct before it.

    Matches the pattern on the graph: a BatchNorm whose input comes only from a Convolution,
    Deconvolution, DepthwiseConvolution or InnerProduct is folded into its weights and bias (a bias
    is added where there was none), with the Scale that reads it, in place or not; each BatchNorm's
    own eps and scale factor are used. A BatchNorm that cannot be folded (after a Concat, input
    read by other layers, batch statistics) stays, and the report says why. The report gives
    params, MACs, file size and forward time before and after, and how far the outputs moved.

    \b
    Example:
      dnntool fold-bn ResNet-50-deploy.prototxt ResNet-50-model.caffemodel -o resnet50_nobn
      dnntool fold-bn mobilenet_deploy.prototxt mobilenet.caffemodel -o out/mobilenet_folded --json
    """
    from dnntool.slim.fold_bn import fold_bn_files

    rep = fold_bn_files(net, weights, prefix, parse_input_shapes(input_shapes), batches, timing_db,
                        device, repeat)
    echo_report(rep, as_json)
