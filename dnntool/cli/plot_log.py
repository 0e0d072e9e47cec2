"""``dnntool plot-log``."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("plot-log")
@click.argument("logs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="The plot; the suffix picks the format: .html (self-contained; default <first log>.html),"
                   " .svg, or .png (needs matplotlib).")
@click.option("--x", "x", type=click.Choice(["iters", "seconds"]), default="iters", show_default=True,
              help="Plot against iterations or seconds since the run started (from glog's timestamps).")
@click.option("--series", "wanted", metavar="NAME,...",
              help="Series to draw: output names (loss, accuracy), lr, smoothed_loss, or phase:name"
                   " (test:loss). Default: all.")
@click.option("--smooth", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
              help="Draw the moving average over N logged points.")
@click.option("--csv", "as_csv", is_flag=True,
              help="Print the parsed table as CSV (parse_log.py's columns, plus run and phase); plots only with -o.")
@click.option("--json", "as_json", is_flag=True, help="Print the parsed records as JSON; plots only with -o.")
def cli(logs, output, x, wanted, smooth, as_csv, as_json):
    """Plot training curves from Caffe logs (loss, lr, test outputs), several runs overlaid.

    Reads the logs of `caffe train` and `dnntool train` (glog lines, as Caffe's parse_log.py reads
    them, older formats included) and `dnntool train --log-json` files. One panel per series, one
    line per log (the legend names the file). Seconds come from the glog timestamps as
    extract_seconds.py computes them, across midnight and new year.

    \b
    Example:
      dnntool train --solver lenet_solver.prototxt > lenet.log; dnntool plot-log lenet.log
      dnntool plot-log run1.log run2.log --x seconds --series loss,accuracy -o curves.png
      dnntool plot-log caffe.INFO --smooth 10 -o curves.svg
      dnntool plot-log lenet.log --csv > lenet.csv          # parse_log.py's table
    """
    import json

    from dnntool.tools.curves import format_of
    from dnntool.tools.plotlog import parse_logs, to_csv, write_plot

    if as_csv and as_json:
        raise click.UsageError("give --csv or --json, not both")
    if output is not None:
        format_of(output)  # a bad suffix is a usage error before any work
    names = [s.strip() for s in wanted.split(",") if s.strip()] if wanted else None
    runs = parse_logs(logs)
    if as_csv:
        click.echo(to_csv(runs), nl=False)
    elif as_json:
        click.echo(json.dumps({"runs": [r.to_dict() for r in runs]}, indent=1))
    if output is None and (as_csv or as_json):
        return
    output = output or f"{Path(logs[0]).stem}.html"
    drawn = write_plot(runs, output, x, names, smooth)
    panels = list(dict.fromkeys(f"{c.phase}:{c.name}" for c in drawn))
    click.echo(f"wrote {output}: {len(runs)} run(s), {len(panels)} series ({', '.join(panels)})", err=True)
