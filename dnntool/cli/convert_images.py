"""``dnntool convert-images``."""

from __future__ import annotations

import json

import click

from dnntool.cli._options import CaffeFlagsCommand, jobs_option, quiet_option


@click.command("convert-images", cls=CaffeFlagsCommand)
@click.argument("paths", nargs=-1, required=True, metavar="ROOT LISTFILE DB")
@click.option("--resize-height", type=click.IntRange(min=0), default=0, show_default=True,
              help="Height to resize to (with --resize-width; 0 keeps the size).")
@click.option("--resize-width", type=click.IntRange(min=0), default=0, show_default=True,
              help="Width to resize to (with --resize-height; 0 keeps the size).")
@click.option("--resize-mode", type=click.Choice(["squash", "fit", "fill"]), default="squash",
              show_default=True, help="squash: exact resize (Caffe); fit: keep aspect, pad with black;"
              " fill: keep aspect, centre-crop (DIGITS).")
@click.option("--gray", is_flag=True, help="Read images as grayscale (1 channel).")
@click.option("--shuffle", is_flag=True, help="Shuffle the list (seeded by --seed; Caffe's order differs).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --shuffle and --val-split.")
@click.option("--encoded", is_flag=True, help="Store encoded image bytes (the file's own when no"
              " re-encoding is needed) instead of raw pixels.")
@click.option("--encode-type", type=click.Choice(["png", "jpg"]), default=None,
              help="Re-encode as png or jpg (implies --encoded; default: the file's own type).")
@click.option("--check-size", is_flag=True, help="Fail when an image's size differs from the first's.")
@click.option("--backend", type=click.Choice(["lmdb"]), default="lmdb", show_default=True,
              help="Database backend (LevelDB is not supported).")
@click.option("--from-folders", is_flag=True, help="Take images from ROOT/<class>/ (labels by sorted"
              " class name, labels.txt beside DB); then the arguments are ROOT DB.")
@click.option("--val-split", type=click.FloatRange(0, 1, max_open=True), default=0.0,
              help="Fraction of each class written to a validation DB (stratified, seeded).")
@click.option("--val-db", type=click.Path(), default=None, help="Validation DB path [default: DB_val].")
@click.option("--strict", is_flag=True, help="Fail on a missing, unreadable or corrupt image instead of skipping it.")
@click.option("--overwrite", is_flag=True, help="Replace an existing DB (once the new one is complete).")
@jobs_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (for scripts).")
@quiet_option
def cli(paths, resize_height, resize_width, resize_mode, gray, shuffle, seed, encoded, encode_type,
        check_size, backend, from_folders, val_split, val_db, strict, overwrite, jobs, as_json, quiet):
    """Convert images and a list file into an LMDB of Caffe Datums (Caffe's convert_imageset).

    LISTFILE lines are `path label` (the label is the last field, so paths may hold spaces); paths
    are relative to ROOT. Keys are `%08d_<path>` in list order. Each Datum holds channels, height,
    width, label and CHW BGR bytes, or with --encoded the image bytes (C/H/W still set). Caffe's
    underscore spellings (--resize_height=256, --shuffle=true) are accepted.

    Missing or corrupt images are skipped with a warning (--strict: an error). The DB is written
    under DB.tmp-<pid> and renamed when complete; an existing DB is kept unless --overwrite.

    \b
    Example:
      dnntool convert-images images/ train.txt train_lmdb --resize-height 227 --resize-width 227 --shuffle
      dnntool convert-images --from-folders photos/ out/train_lmdb --val-split 0.1 --encoded
    """
    from dnntool.cli._progress import progress_bar
    from dnntool.tools.images import ConvertOptions, convert_images

    want = 2 if from_folders else 3
    if len(paths) != want:
        usage = "ROOT DB (with --from-folders)" if from_folders else "ROOT LISTFILE DB"
        raise click.UsageError(f"expected {usage}, got {len(paths)} argument(s)")
    root, listfile, db = (paths[0], None, paths[1]) if from_folders else paths
    opts = ConvertOptions(
        resize_height=resize_height, resize_width=resize_width, resize_mode=resize_mode, gray=gray,
        encoded=encoded, encode_type=encode_type or "", shuffle=shuffle, seed=seed,
        check_size=check_size, strict=strict, jobs=jobs, overwrite=overwrite, val_split=val_split,
        val_db=val_db,
    )
    with progress_bar("converting", unit="img", quiet=quiet) as bar:
        summary = convert_images(root, listfile, db, opts, progress=bar, warn=bar.log)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2))
    elif not quiet:
        kind = "encoded" if summary.encoded else "raw"
        for d in summary.dbs:
            shape = f"{'x'.join(map(str, d.shape))}, " if d.shape else ""
            click.echo(f"wrote {d.path}: {d.written:,} records ({shape}{kind})")
        if summary.labels:
            click.echo(f"wrote {summary.labels}: {len(summary.classes or [])} classes")
        skipped = ", ".join(f"{n} {why}" for why, n in summary.skipped_by_reason().items())
        rate = summary.listed / summary.seconds if summary.seconds else 0.0
        click.echo(f"{summary.listed:,} images in {summary.seconds:.2f} s ({rate:,.0f} images/s);"
                   f" skipped {len(summary.skipped)}{': ' + skipped if skipped else ''}")
