"""``dnntool compare``."""

from __future__ import annotations

import click

from dnntool.cli._options import device_option, input_shape_option, json_option, parse_input_shapes


@click.command("compare")
@click.argument("models", nargs=-1, required=True, metavar="NET_A W_A NET_B W_B")
@click.option("--image", "--images", "images", multiple=True, type=click.Path(dir_okay=False),
              help="An image to run (repeatable), through the input layer's transform_param.")
@click.option("--db", type=click.Path(), help="Run records of this LMDB instead of random inputs.")
@click.option("--batches", type=click.IntRange(min=1), help="Batches to run (default 1; images: all of them).")
@click.option("--blobs", metavar="BLOB,...", help="Only these blobs (default: every blob in both).")
@input_shape_option
@device_option
@json_option
def cli(models, images, db, batches, blobs, input_shapes, device, as_json):
    """Run two models on the same inputs and print how far each shared blob moved.

    A model is a prototxt with its caffemodel, or an .onnx file (e.g. from quantize), so the
    arguments are NET_A W_A NET_B W_B, NET_A W_A B.onnx, and so on. Blobs are matched by name (a
    Caffe blob at its final value, after in-place layers) and compared in A's order: max and mean
    absolute difference, and both relative to A's max and mean magnitude. Inputs are random unless
    --image or --db give real ones.

    \b
    Example:
      dnntool compare deploy.prototxt w.caffemodel folded.prototxt folded.caffemodel
      dnntool compare train_val.prototxt w.caffemodel net_int8.onnx --db val_lmdb --batches 4 --json
    """
    import json

    from dnntool.slim.compare import compare, split_models

    if images and db:
        raise click.UsageError("give --image or --db, not both")
    a, b = split_models(models)
    names = [v.strip() for v in blobs.split(",") if v.strip()] if blobs else None
    res = compare(a, b, list(images) or None, db, batches, names, parse_input_shapes(input_shapes) or None,
                  device)
    click.echo(json.dumps(res.to_dict(), indent=2) if as_json else "\n".join(res.lines()))
