"""``dnntool convert-images``."""

from __future__ import annotations

import json

import click

from dnntool.cli._options import CaffeFlagsCommand, jobs_option, quiet_option


def _parse_piece(ctx, param, value):
    if value is None:
        return None
    i, sep, k = value.partition("/")
    if not (sep and i.strip().isdigit() and k.strip().isdigit()) or not 0 <= int(i) < int(k):
        raise click.BadParameter(f"'{value}': expected I/K with 0 <= I < K (e.g. 0/4)")
    return int(i), int(k)


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
@click.option("--shards", type=click.IntRange(min=1), default=None, metavar="K",
              help="Write the training records to K LMDBs DB-00000-of-0000K ... (record j to shard j % K,"
              " keys unchanged); a Data layer reads them back in order as source 'DB@K'.")
@click.option("--shard", "piece", callback=_parse_piece, default=None, metavar="I/K",
              help="Write only shard I of K (0-based), byte-identical to that shard of a --shards K run;"
              " piece 0 also writes the validation DB.")
@click.option("--strict", is_flag=True, help="Fail on a missing, unreadable or corrupt image instead of skipping it.")
@click.option("--overwrite", is_flag=True, help="Replace an existing DB (once the new one is complete).")
@jobs_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (for scripts).")
@quiet_option
def cli(paths, resize_height, resize_width, resize_mode, gray, shuffle, seed, encoded, encode_type,
        check_size, backend, from_folders, val_split, val_db, shards, piece, strict, overwrite, jobs, as_json,
        quiet):
    """Convert images and a list file into an LMDB of Caffe Datums (Caffe's convert_imageset).

    LISTFILE lines are `path label` (the label is the last field, so paths may hold spaces); paths
    are relative to ROOT. Keys are `%08d_<path>` in list order. Each Datum holds channels, height,
    width, label and CHW BGR bytes, or with --encoded the image bytes (C/H/W still set). Caffe's
    underscore spellings (--resize_height=256, --shuffle=true) are accepted.

    Missing or corrupt images are skipped with a warning (--strict: an error). The DB is written
    under DB.tmp-<pid> and renamed when complete; an existing DB is kept unless --overwrite.

    With --shards K the training DB becomes K LMDBs DB-00000-of-0000K ... DB-0000{K-1}-of-0000K
    (TFRecord's names): record j of the final (shuffled) list goes to shard j % K under its usual
    key. --shard I/K writes one of them (one machine each). The validation DB is not sharded.

    \b
    Example:
      dnntool convert-images images/ train.txt train_lmdb --resize-height 227 --resize-width 227 --shuffle
      dnntool convert-images --from-folders photos/ out/train_lmdb --val-split 0.1 --encoded
      dnntool convert-images images/ train.txt train_lmdb --shuffle --shards 4
    """
    from dnntool.cli._progress import progress_bar
    from dnntool.tools.images import ConvertOptions, convert_images

    want = 2 if from_folders else 3
    if len(paths) != want:
        usage = "ROOT DB (with --from-folders)" if from_folders else "ROOT LISTFILE DB"
        raise click.UsageError(f"expected {usage}, got {len(paths)} argument(s)")
    root, listfile, db = (paths[0], None, paths[1]) if from_folders else paths
    if piece is not None and shards is not None and shards != piece[1]:
        raise click.UsageError(f"--shard {piece[0]}/{piece[1]} and --shards {shards} disagree on K")
    opts = ConvertOptions(
        resize_height=resize_height, resize_width=resize_width, resize_mode=resize_mode, gray=gray,
        encoded=encoded, encode_type=encode_type or "", shuffle=shuffle, seed=seed,
        check_size=check_size, strict=strict, jobs=jobs, overwrite=overwrite, val_split=val_split,
        val_db=val_db, shards=piece[1] if piece else shards or 0, shard=piece[0] if piece else None,
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
