"""``dnntool init-weights``."""

from __future__ import annotations

import click

from dnntool.cli._options import (
    input_shape_option,
    load_net,
    phase_option,
    quiet_option,
    stage_options,
)


@click.command("init-weights")
@click.argument("net", type=click.Path(dir_okay=False))
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False),
              help="The .caffemodel to write.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same file).")
@input_shape_option
@phase_option
@stage_options
@quiet_option
def cli(net, out, seed, input_shapes, phase, stages, level, quiet):
    """Fill a net's parameters from its prototxt fillers and write a caffemodel.

    What pycaffe users do with caffe.Net(...).save(): each blob is filled by its weight_filler or
    bias_filler (constant, uniform, gaussian, xavier, msra, bilinear, positive_unitball; default
    constant 0) with Caffe's fan-in/fan-out rules. Each layer draws from its own stream derived
    from --seed and its name, so the same seed gives the same file.

    \b
    Example:
      dnntool init-weights lenet_train_test.prototxt -o lenet_init.caffemodel --seed 1
    """
    from dnntool.tools.export import init_weights_file

    n = load_net(net, phase, stages, level, input_shapes)
    res = init_weights_file(n, out, seed)
    if not quiet:
        click.echo(f"wrote {res.path}: {len(res.layers)} layers, {res.values:,} values (seed {seed})")
