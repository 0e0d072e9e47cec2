"""``dnntool compute-image-mean``."""

from __future__ import annotations

import json
import os

import click

from dnntool.cli._options import CaffeFlagsCommand, jobs_option, json_option, quiet_option


@click.command("compute-image-mean", cls=CaffeFlagsCommand)
@click.argument("paths", nargs=-1, required=True, metavar="DB... [MEAN.binaryproto]")
@click.option("--npy", type=click.Path(dir_okay=False), default=None,
              help="Also write the mean image as a float64 C x H x W .npy file.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text: prototxt-ready mean_value lines; json: everything, for scripts.")
@click.option("--backend", type=click.Choice(["lmdb"]), default="lmdb", show_default=True,
              help="Database backend (LevelDB is not supported).")
@jobs_option
@json_option
@quiet_option
def cli(paths, npy, fmt, backend, jobs, as_json, quiet):
    """Compute the mean image of LMDBs of Datums (Caffe's compute_image_mean), plus per-channel std.

    Writes MEAN.binaryproto (a BlobProto with num 1, channels, height, width and float data) when
    given: the last argument is the output unless it is an existing LMDB. Several DBs are averaged
    together (their sums merged: shards of one dataset). Prints the per-channel means in BGR order
    as `mean_value:` lines to paste into a prototxt's transform_param. Raw, float_data and encoded
    records (decoded in parallel); sums are exact (integers, float64).

    \b
    Example:
      dnntool compute-image-mean train_lmdb mean.binaryproto
      dnntool compute-image-mean shard0_lmdb shard1_lmdb mean.binaryproto --npy mean.npy --format json
      dnntool compute-image-mean train_lmdb@4 mean.binaryproto      # the 4 shards of --shards 4
    """
    from dnntool.cli._progress import progress_bar
    from dnntool.io.datadb import is_lmdb
    from dnntool.io.shards import source_paths
    from dnntool.tools.image_mean import compute_image_mean, write_mean

    dbs, output = list(paths), None
    last = dbs[-1]
    if len(dbs) >= 2 and not is_lmdb(last) and not os.path.isdir(last) and source_paths(last) == [last]:
        output = dbs.pop()  # the last argument is the output unless it names databases ('DB@K', 'A,B')
    with progress_bar("averaging", unit="rec", quiet=quiet) as bar:
        result = compute_image_mean(dbs, jobs=jobs, progress=bar)
    write_mean(result, output, npy)
    if as_json or fmt == "json":
        click.echo(json.dumps({**result.to_dict(), "binaryproto": output, "npy": npy}, indent=2))
        return
    if quiet:
        return
    c, h, w = result.shape
    wrote = f"; mean image written to {output}" if output else ""
    click.echo(f"# {result.count:,} records, {c}x{h}x{w}, from {', '.join(dbs)}{wrote}")
    for v in result.channel_mean:
        click.echo(f"mean_value: {v:.4f}")
    click.echo(f"# std per channel: {' '.join(f'{v:.4f}' for v in result.channel_std)}")
