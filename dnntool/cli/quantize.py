"""``dnntool quantize``."""

from __future__ import annotations

import click

from dnntool.cli._options import (
    echo_report,
    model_arguments,
    parse_input_shapes,
    report_options,
)


@click.command("quantize")
@model_arguments
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False), help="The .onnx to write.")
@click.option("--dtype", type=click.Choice(["fp16", "int8"]), required=True, help="Target precision.")
@click.option("--calib-db", type=click.Path(), help="int8: LMDB to calibrate on (default: the"
              " TEST data layer's source), read through the net's transform_param.")
@click.option("--calib-batches", type=click.IntRange(min=1), default=10, show_default=True,
              help="int8: batches to calibrate on.")
@click.option("--calib-method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True, help="int8: how activation ranges are chosen.")
@click.option("--per-channel", is_flag=True, help="int8: one weight scale per output channel.")
@click.option("--test-db", type=click.Path(), help="Score float and quantized side by side on"
              " this LMDB (through the TEST data layer; needs an Accuracy layer or a loss to report).")
@click.option("--iterations", type=click.IntRange(min=1), help="--test-db: batches (default: the database once).")
@report_options
def cli(net, weights, out, dtype, calib_db, calib_batches, calib_method, per_channel, test_db, iterations,
        input_shapes, batches, repeat, timing_db, device, as_json):
    """Quantize a net to an fp16 or static int8 ONNX model, with accuracy side by side.

    The float ONNX translation (as export-onnx writes it) is optimised by ONNX Runtime, then either
    converted to float16 (inputs and outputs stay float32, loss and metric layers stay float32), or
    quantized to int8 QDQ with onnxruntime.quantization (uint8 activations, int8 weights) calibrated
    on batches read through the net's TEST data layer (its transform_param) or --calib-db. With
    --test-db the float net and the .onnx are scored on the same batches; `dnntool test --model
    OUT.onnx --data NET` scores the .onnx the same way.

    \b
    Example:
      dnntool quantize train_val.prototxt w.caffemodel --dtype int8 --calib-batches 20 -o net_int8.onnx \\
          --test-db val_lmdb --per-channel
      dnntool quantize deploy.prototxt w.caffemodel --dtype fp16 -o net_fp16.onnx
    """
    from dnntool.slim.quantize import quantize_files

    rep = quantize_files(net, weights, out, dtype, calib_db, calib_batches, calib_method, per_channel, test_db,
                         iterations, parse_input_shapes(input_shapes), batches, timing_db, device, repeat)
    echo_report(rep, as_json)
