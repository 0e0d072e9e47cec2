"""``dnntool export-onnx``."""

from __future__ import annotations

import click

from dnntool.cli._options import (
    input_shape_option,
    load_net,
    phase_option,
    quiet_option,
    stage_options,
)


@click.command("export-onnx")
@click.argument("net", type=click.Path(dir_okay=False))
@click.option("--weights", required=True, type=click.Path(dir_okay=False), help="The .caffemodel.")
@click.option("-o", "--output", "out", required=True, type=click.Path(dir_okay=False), help="The .onnx file to write.")
@input_shape_option
@click.option("--dynamic-batch", is_flag=True, help="Leave the batch dimension free (named N).")
@click.option("--outputs", metavar="BLOB,...", help="Blobs to output instead of the net's outputs.")
@phase_option
@stage_options
@quiet_option
def cli(net, weights, out, input_shapes, dynamic_batch, outputs, phase, stages, level, quiet):
    """Export a net with its caffemodel weights as an ONNX model (checked with onnx.checker).

    Inputs are the data layers' tops, outputs the net's outputs (or --outputs), with Caffe's
    semantics (pooling ceil/clip, BatchNorm scale factor, LRN...). Weights are matched by layer
    name (V1 or current caffemodels); a missing or wrong-shaped blob is an error naming the layer.

    \b
    Example:
      dnntool export-onnx deploy.prototxt --weights bvlc_googlenet.caffemodel -o googlenet.onnx
      dnntool export-onnx deploy.prototxt --weights w.caffemodel -o m.onnx --input-shape data=1,3,224,224 --dynamic-batch
    """
    from dnntool.tools.export import export_onnx

    n = load_net(net, phase, stages, level, input_shapes)
    blobs = [b.strip() for b in outputs.split(",") if b.strip()] if outputs else None
    res = export_onnx(n, weights, out, outputs=blobs, dynamic_batch=dynamic_batch)
    if quiet:
        return

    def sig(items):
        return ", ".join(f"{name} [{'x'.join(str(d) for d in dims)}]" for name, dims in items)

    click.echo(f"wrote {res.path}: opset {res.opset}, {res.nodes} nodes, {res.bytes / 1e6:.1f} MB")
    click.echo(f"  inputs:  {sig(res.inputs)}")
    click.echo(f"  outputs: {sig(res.outputs)}")
