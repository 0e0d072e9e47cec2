"""``dnntool flops``."""

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


@click.command("flops")
@click.argument("net", type=click.Path(dir_okay=False))
@input_shape_option
@phase_option
@stage_options
@click.option("--unit", type=click.Choice(["macs", "flops"]), default="macs", show_default=True,
              help="What --max and the share column measure.")
@format_option
@json_option
@quiet_option
@max_option("MACs (or FLOPs with --unit flops)")
def cli(net, input_shapes, phase, stages, level, unit, fmt, as_json, quiet, limit):
    """Count MACs, FLOPs and activations per layer for the net's batch.

    \b
    Conventions (peers differ; these are netscope's for MACs):
      MACs  multiply-accumulates. Convolution: outputs x (C_in/group) x kh x kw
            (depthwise: group = C_in). Deconvolution: inputs x (C_out/group) x kh x kw.
            InnerProduct: M x K x N. Scale: 1 per element. LRN: local_size per element
            (local_size^2 within channel). Eltwise PROD, Normalize. Bias adds are not MACs;
            ReLU, pooling, BatchNorm, Softmax have 0 MACs.
      FLOPs 2 per MAC + 1 per bias add + element-wise work: ReLU 1/element, BatchNorm
            2/element (test) or 5 (train), pooling kh x kw per output (+1 for AVE),
            Softmax 4/element, Eltwise SUM 1 per extra bottom, Dropout 0 at test.
      activations: values written by each layer (in-place layers write none).
    Totals are for the declared batch; per-image figures are shown when the batch is > 1.

    \b
    Example:
      dnntool flops ResNet-50-deploy.prototxt --max 4G
      dnntool flops train_val.prototxt --input-shape data=1,3,227,227 --format markdown
    """
    from dnntool.cli._costs import emit_report
    from dnntool.tools.stats import flops

    n = load_net(net, phase, stages, level, input_shapes)
    emit_report(flops(n), "cost", "json" if as_json else fmt, limit, unit, quiet=quiet)
