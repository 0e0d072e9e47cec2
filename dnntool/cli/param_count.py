"""``dnntool param-count``."""

from __future__ import annotations

import click

from dnntool.cli._options import (
    format_option,
    input_shape_option,
    json_option,
    load_net,
    max_option,
    phase_option,
    quiet_option,
    stage_options,
)


@click.command("param-count")
@click.argument("net", type=click.Path(dir_okay=False))
@click.option("--weights", type=click.Path(dir_okay=False), help="Count from this .caffemodel (checked against NET).")
@input_shape_option
@phase_option
@stage_options
@format_option
@json_option
@quiet_option
@max_option("learnable params")
def cli(net, weights, input_shapes, phase, stages, level, fmt, as_json, quiet, limit):
    """Count learnable parameters and stored blobs per layer.

    Params are learnable blobs (weights, biases, Scale/PReLU factors; a shared blob counts once).
    BatchNorm's mean/variance/scale-factor blobs are stored values, reported apart. With --weights the
    counts come from the caffemodel, and any disagreement with NET is an error naming the layer.

    \b
    Example (a CI model-size check; exit status 1 when over the limit):
      dnntool param-count deploy.prototxt --max 5M
      dnntool param-count lenet.prototxt --weights lenet.caffemodel --format json
    """
    from dnntool.cli._costs import emit_report
    from dnntool.tools.stats import param_count

    n = load_net(net, phase, stages, level, input_shapes)
    w = None
    if weights:
        from dnntool.io.caffemodel import load_weights

        w = load_weights(weights)
    emit_report(param_count(n, w), "params", "json" if as_json else fmt, limit, quiet=quiet)
