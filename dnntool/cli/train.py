"""``dnntool train``."""

from __future__ import annotations

import os
import sys
import time

import click

from dnntool.cli._options import CaffeFlagsCommand, device_option


def glog_prefix(now: float | None = None) -> str:
    """glog's line prefix (``I0210 13:39:22.381027 25210 dnntool] ``) that Caffe's
    tools/extra/parse_log.py and extract_seconds.py read the time from."""
    now = time.time() if now is None else now
    stamp = time.strftime("%m%d %H:%M:%S", time.localtime(now))
    return f"I{stamp}.{int(now % 1 * 1e6):06d} {os.getpid():5d} dnntool] "


@click.command("train", cls=CaffeFlagsCommand)
@click.option("--solver", required=True, type=click.Path(dir_okay=False),
              help="Solver prototxt (its net paths are opened from the current directory, else beside it).")
@click.option("--weights", metavar="W.caffemodel[,...]",
              help="Fine-tune: copy blobs by layer name from these caffemodels (comma-separated).")
@click.option("--snapshot", type=click.Path(dir_okay=False),
              help="Resume from a .solverstate (iteration, solver history, weights, data position).")
@device_option
@click.option("--log-json", type=click.Path(dir_okay=False), metavar="FILE",
              help="Also write one JSON record per display and test event (JSON lines).")
@click.option("--plain", is_flag=True, help="Log lines without glog's 'I0210 13:39:22.381027 PID' prefix.")
@click.option("-q", "--quiet", is_flag=True, help="No log lines and no progress bar (errors only).")
@click.option("--workers", type=click.IntRange(min=1), metavar="N",
              help="Data-parallel training on N MPI ranks of this machine (runs mpiexec -n N for you;"
                   " needs dnntool[mpi]). Under `mpirun -np N dnntool train` this is not needed.")
def cli(solver, weights, snapshot, device, log_json, plain, quiet, workers):
    """Train a net from a solver prototxt, as `caffe train`.

    Runs the solver (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam; every lr policy) on ONNX
    Runtime with the TRAIN net's Data/ImageData layers prefetched in the background; tests the
    TEST-phase net every test_interval; snapshots <prefix>_iter_N.caffemodel and .solverstate every
    `snapshot` iterations and at the end. Log lines are Caffe's (with glog's prefix, so
    parse_log.py and plot_training_log.py read them) on stdout; a progress bar is drawn on a
    terminal. Ctrl-C (SIGINT) snapshots and stops (exit 130; twice stops at once); SIGHUP snapshots
    and goes on. A NaN or infinite loss stops the run (exit 1), keeping the last good snapshot.

    Data-parallel: `mpirun -np N dnntool train --solver S` (or `--workers N`) runs N ranks, each
    reading every N-th training record; their gradients are averaged by one MPI Allreduce per
    iteration, so the global batch is N x batch_size, as in multi-GPU Caffe. Rank 0 logs, tests
    and snapshots.

    \b
    Example:
      dnntool train --solver lenet_solver.prototxt 2>&1 | tee lenet.log
      dnntool train --solver cifar10_quick_solver.prototxt --workers 2
      dnntool train --solver solver.prototxt --weights bvlc_reference_caffenet.caffemodel
      dnntool train --solver solver.prototxt --snapshot lenet_iter_5000.solverstate --log-json log.jsonl
    """
    import json

    from dnntool.cli._progress import progress_bar
    from dnntool.train import dist
    from dnntool.train.loop import Diverged, train

    if workers and workers > 1 and dist.launched_size() == 1:
        argv = ["train", "--solver", solver, "--device", device]
        for flag, value in (("--weights", weights), ("--snapshot", snapshot), ("--log-json", log_json)):
            argv += [flag, value] if value else []
        argv += ["--plain"] * plain + ["--quiet"] * quiet
        status = dist.launch(workers, argv)
        if status not in (0, 130):
            click.echo(f"Error: the {workers}-rank training job failed (mpiexec exit status {status});"
                       " the last snapshot written is intact", err=True)
        click.get_current_context().exit(0 if status == 0 else 130 if status == 130 else 1)
    rank = dist.launched_rank()
    quiet = quiet or rank != 0  # rank 0 speaks for the job
    out = sys.stdout  # kept: the progress bar redirects sys.stdout while it is drawn
    events = open(log_json, "w", encoding="utf-8") if log_json and rank == 0 else None  # noqa: SIM115

    def on_event(ev) -> None:
        if events is not None:
            events.write(json.dumps({"time": time.time(), **ev.to_dict()}) + "\n")
            events.flush()

    shown = not quiet and sys.stderr.isatty()  # as progress_bar decides
    try:
        with progress_bar("training", unit="iter", quiet=quiet, enabled=shown) as bar:
            def log(line: str) -> None:
                if quiet:
                    return
                text = line if plain else glog_prefix() + line
                if shown and out.isatty():  # the same terminal: print above the bar
                    bar.log(text)
                else:
                    out.write(text + "\n")
                    out.flush()

            try:
                res = train(solver, weights=weights, snapshot=snapshot, device=device, log=log,
                            on_event=on_event, progress=bar)
            except Diverged:
                if rank == 0:
                    raise
                click.get_current_context().exit(1)  # every rank saw it; rank 0 says it
    finally:
        if events is not None:
            events.close()
    if res.stopped and rank == 0:
        where = f"; snapshot {res.snapshots[-1][1]}" if res.snapshots else ""
        click.echo(f"Interrupted at iteration {res.iteration}{where}", err=True)
    if res.stopped:
        click.get_current_context().exit(130)
