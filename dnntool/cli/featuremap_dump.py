"""``dnntool featuremap-dump``."""

from __future__ import annotations

import click

from dnntool.cli._options import device_option, input_shape_option, parse_input_shapes


def _hw(ctx, param, value):
    if value is None:
        return None
    parts = value.replace("x", ",").split(",")
    try:
        h, w = (int(p) for p in parts) if len(parts) == 2 else (int(parts[0]),) * 2
    except ValueError:
        raise click.BadParameter(f"'{value}': expected H,W (or one size)") from None
    if h <= 0 or w <= 0:
        raise click.BadParameter(f"'{value}': sizes must be positive")
    return h, w


@click.command("featuremap-dump")
@click.option("--model", required=True, type=click.Path(dir_okay=False), help="Net prototxt (deploy or train_val).")
@click.option("--weights", required=True, type=click.Path(dir_okay=False), help="The .caffemodel.")
@click.option("--image", "images", multiple=True, type=click.Path(dir_okay=False), help="An image (repeatable).")
@click.option("--db", type=click.Path(), help="An LMDB of Datums to run instead of images.")
@click.option("--num-batches", type=int, help="--db: batches of the net's batch size (default: every record once).")
@click.option("--blobs", default="all", show_default=True, metavar="BLOB,...|all", help="Blobs to dump.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--db-format", type=click.Choice(["lmdb", "npy"]), default="lmdb", show_default=True,
              help="--db: features as one LMDB of float Datums per blob, or .npy.")
@click.option("--mean", help="Mean to subtract: a .binaryproto/.npy file or values (104,117,123).")
@click.option("--scale", type=float, help="Multiply after mean subtraction (e.g. 0.00390625).")
@click.option("--resize", callback=_hw, metavar="H,W", help="Resize before the centre crop to the net input.")
@click.option("--channel-order", type=click.Choice(["bgr", "rgb"], case_sensitive=False), default="bgr",
              show_default=True, help="Channel order the net expects (images and Datums are BGR).")
@click.option("--no-png", is_flag=True, help="Skip the mosaics.")
@device_option
@input_shape_option
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors.")
def cli(model, weights, images, db, num_batches, blobs, out_dir, db_format, mean, scale, resize,
        channel_order, no_png, device, input_shapes, quiet):
    """Dump intermediate blobs (feature maps) for images or LMDB records, keyed by their names.

    Per blob: BLOB.png, a mosaic of the first sample's channels (ceil(sqrt(C)) per row, each
    min-max scaled; vectors as a strip), and the values of every sample: BLOB.npy for images, and
    for --db one LMDB of float Datums per blob (as Caffe's extract_features) or .npy, keyed by the
    record's LMDB key. index.json lists blobs, shapes, statistics and the keys in order. Inputs are
    preprocessed by the net's transform_param, overridden by --mean, --scale, --resize and
    --channel-order; images are resized to the mean's size (or the input's), then centre-cropped.

    \b
    Example:
      dnntool featuremap-dump --model deploy.prototxt --weights googlenet.caffemodel \\
          --image cat.jpg --blobs conv1/7x7_s2,pool5/7x7_s1 --mean 104,117,123 --out maps/
      dnntool featuremap-dump --model deploy.prototxt --weights w.caffemodel --db val_lmdb \\
          --num-batches 10 --blobs fc7 --db-format npy --out feats/
    """
    from dnntool.cli._progress import progress_bar
    from dnntool.tools.featuremaps import Preprocess, dump_featuremaps

    if bool(images) == bool(db):
        raise click.UsageError("give --image IMG (repeatable) or --db DB")
    if num_batches is not None and not db:
        raise click.UsageError("--num-batches goes with --db")
    names = "all" if blobs.strip() == "all" else [b.strip() for b in blobs.split(",") if b.strip()]
    pre = Preprocess(mean=mean, scale=scale, resize=resize, channel_order=channel_order.lower())
    with progress_bar("dumping", unit="batch", quiet=quiet) as bar:
        res = dump_featuremaps(model, weights, out_dir, names, images=list(images) or None, db=db,
                               num_batches=num_batches, db_format=db_format, pre=pre, device=device,
                               input_shapes=parse_input_shapes(input_shapes), png=not no_png, progress=bar)
    if quiet:
        return
    click.echo(f"{len(res.keys)} samples in {res.batches} batch(es) of {res.batch_size} on {res.provider}:"
               f" {len(res.blobs)} blobs -> {res.out_dir}")
    for b in res.blobs:
        st = b.stats
        shape = "x".join(str(d) for d in b.shape) or "scalar"
        desc = (f"min {st['min']:.4g} max {st['max']:.4g} mean {st['mean']:.4g} std {st['std']:.4g}"
                f" zeros {st['zeros']:.0%}") if st else ""
        click.echo(f"  {b.name}  {shape}  {desc}  -> {b.data}{', ' + b.png if b.png else ''}")
