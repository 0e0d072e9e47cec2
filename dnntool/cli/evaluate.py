"""``dnntool test`` (module named evaluate so pytest never collects it)."""

from __future__ import annotations

import json

import click

from dnntool.cli._options import (
    device_option,
    input_shape_option,
    json_option,
    parse_input_shapes,
    stage_options,
)


@click.command("test")
@click.option("--model", required=True, type=click.Path(dir_okay=False),
              help="Net prototxt (its TEST-phase data layer feeds it), or an .onnx model with --data.")
@click.option("--weights", type=click.Path(dir_okay=False), help="The .caffemodel (for a prototxt model).")
@click.option("--data", type=click.Path(dir_okay=False),
              help="For an .onnx model: the prototxt whose TEST-phase data layer(s) feed its inputs.")
@click.option("--iterations", type=int, default=50, show_default=True, help="Batches to run.")
@device_option
@input_shape_option
@stage_options
@json_option
@click.option("-v", "--verbose", is_flag=True, help="Also print every batch's outputs (Batch i, name = v).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def cli(model, weights, data, iterations, device, input_shapes, stages, level, as_json, verbose, quiet):
    """Score a model on its own data layer, as `caffe test`: mean of each output over N batches.

    The TEST phase runs on ONNX Runtime with the net's Data (LMDB) or ImageData (list file) layer and
    its transform_param (scale, mean_file, mean_value, crop_size); batches are prefetched in the
    background and wrap around at the end of the data. The first line names the execution provider.
    An .onnx model (e.g. quantized) is scored on the same batches with --data naming the prototxt
    whose data layer feeds it; its input names must be that layer's tops.

    \b
    Example:
      dnntool test --model lenet_train_test.prototxt --weights lenet_iter_10000.caffemodel --iterations 100
      dnntool test --model lenet_int8.onnx --data lenet_train_test.prototxt --json
    """
    from dnntool.cli._progress import progress_bar
    from dnntool.tools.evaluate import evaluate, fmt

    def batch_lines(i, values):
        for name, v in values:
            click.echo(f"Batch {i}, {name} = {fmt(v)}")

    with progress_bar("testing", unit="batch", quiet=quiet or verbose) as bar:
        res = evaluate(model, weights, iterations, device, data=data, stages=stages, level=level,
                       input_shapes=parse_input_shapes(input_shapes), progress=bar,
                       on_batch=batch_lines if verbose and not as_json else None,
                       on_start=None if as_json else click.echo)
    if as_json:
        click.echo(json.dumps(res.to_dict(), indent=2))
        return
    for line in res.caffe_lines():
        click.echo(line)
