"""``dnntool prune``."""

from __future__ import annotations

import click

from dnntool.cli._options import (
    echo_report,
    model_arguments,
    parse_input_shapes,
    report_options,
)


def _names(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _ratios(ctx, param, value):
    try:
        out = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"'{value}': expected comma-separated fractions") from None
    if not out or any(not 0 < r < 1 for r in out):
        raise click.BadParameter(f"'{value}': ratios must be between 0 and 1")
    return out


@click.command("prune")
@model_arguments
@click.option("-o", "--output", "prefix", metavar="PREFIX", help="Write PREFIX.prototxt and PREFIX.caffemodel.")
@click.option("--sparsity", type=float, help="Magnitude pruning: the fraction of weights set to zero.")
@click.option("--scope", type=click.Choice(["layer", "global"]), default="layer", show_default=True,
              help="Magnitude pruning: the sparsity of each layer, or of all chosen layers together.")
@click.option("--layers", metavar="NAME,...", help="Layers to prune (default for --sparsity: every"
              " Convolution, Deconvolution and InnerProduct).")
@click.option("--structured", is_flag=True, help="Remove whole filters (needs --ratio and --layers).")
@click.option("--ratio", type=float, help="--structured: the fraction of each layer's filters to remove.")
@click.option("--criterion", type=click.Choice(["l1", "l2"]), default="l1", show_default=True,
              help="--structured: the filter norm ranking them (smallest removed).")
@click.option("--sensitivity", is_flag=True, help="Cut each layer alone at several ratios and print"
              " accuracy versus size (writes nothing).")
@click.option("--test-db", type=click.Path(), help="--sensitivity: the LMDB to score on"
              " (default: the TEST data layer's source).")
@click.option("--ratios", default="0.1,0.3,0.5,0.7,0.9", show_default=True, callback=_ratios,
              help="--sensitivity: the ratios to try.")
@click.option("--iterations", type=click.IntRange(min=1), help="--sensitivity: test batches (default: the"
              " database once).")
@report_options
def cli(net, weights, prefix, sparsity, scope, layers, structured, ratio, criterion, sensitivity, test_db,
        ratios, iterations, input_shapes, batches, repeat, timing_db, device, as_json):
    """Prune weights: zero the smallest, or remove whole filters and shrink the net.

    Magnitude pruning (--sparsity) zeroes the smallest weights per layer or globally and reports
    each layer's sparsity (the file keeps its size). Structured pruning (--structured, Li et al.,
    "Pruning Filters for Efficient ConvNets") removes the filters with the smallest l1 (or l2) norm
    and rewrites num_output and every reader of those channels: BatchNorm/Scale blobs, the next
    convolution's or InnerProduct's inputs, depthwise layers, Concat offsets. Layers whose outputs
    meet at an Eltwise must be cut together and lose the same filters; otherwise the cut is refused,
    naming the layers. --sensitivity scores the net with each layer cut alone at each ratio.

    \b
    Example:
      dnntool prune deploy.prototxt w.caffemodel --sparsity 0.5 --scope global -o net_sparse
      dnntool prune deploy.prototxt w.caffemodel --structured --ratio 0.3 --layers conv2,conv3 -o net_slim
      dnntool prune train_val.prototxt w.caffemodel --sensitivity --test-db val_lmdb --layers conv1,conv2
    """
    import json

    from dnntool.errors import UsageError

    if sensitivity:
        from dnntool.slim.prune import sensitivity as scan

        res = scan(net, weights, _names(layers), ratios, test_db, iterations, criterion, device)
        click.echo(json.dumps(res.to_dict(), indent=2) if as_json else "\n".join(res.lines()))
        return
    if not prefix:
        raise UsageError("-o PREFIX is needed (the pruned net is written to PREFIX.prototxt/.caffemodel)")
    from dnntool.slim.prune import prune_files

    rep = prune_files(net, weights, prefix, sparsity, scope, _names(layers), structured, ratio, criterion,
                      parse_input_shapes(input_shapes), batches, timing_db, device, repeat)
    echo_report(rep, as_json)
