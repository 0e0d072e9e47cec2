"""The ``dnntool`` command: a lazily loaded click group of thin commands over the library.

Exit status: 0 success; 1 failure (bad input, threshold exceeded); 2 usage error; 130 interrupted.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from dnntool import __version__

# command name -> "module:attribute"; modules are imported only when their command runs (or --help).
COMMANDS: dict[str, str] = {
    "compare": "dnntool.cli.compare:cli",
    "compute-image-mean": "dnntool.cli.compute_image_mean:cli",
    "convert-images": "dnntool.cli.convert_images:cli",
    "decompose": "dnntool.cli.decompose:cli",
    "demo": "dnntool.cli.demo:cli",
    "export-onnx": "dnntool.cli.export_onnx:cli",
    "featuremap-dump": "dnntool.cli.featuremap_dump:cli",
    "flops": "dnntool.cli.flops:cli",
    "fold-bn": "dnntool.cli.fold_bn:cli",
    "init-weights": "dnntool.cli.init_weights:cli",
    "netscope": "dnntool.cli.netscope:cli",
    "param-count": "dnntool.cli.param_count:cli",
    "plot-log": "dnntool.cli.plot_log:cli",
    "prune": "dnntool.cli.prune:cli",
    "quantize": "dnntool.cli.quantize:cli",
    "test": "dnntool.cli.evaluate:cli",
    "time": "dnntool.cli.time_net:cli",
    "train": "dnntool.cli.train:cli",
    "upgrade-net": "dnntool.cli.upgrade_net:cli",
}


def _rank_tag() -> str:
    """`` (rank N)`` in the messages of an MPI rank other than 0 (each rank of a job may report)."""
    from dnntool.train.dist import launched_rank

    rank = launched_rank()
    return f" (rank {rank})" if rank else ""


class LazyGroup(click.Group):
    """click's lazy-loading group (click docs, "Lazily Loading Subcommands") + one error boundary."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context):
        from dnntool.errors import DnnToolError

        debug = bool(ctx.params.get("debug")) or os.environ.get("DNNTOOL_DEBUG") == "1"
        try:
            return super().invoke(ctx)
        except DnnToolError as e:
            if debug:
                raise
            click.echo(f"Error{_rank_tag()}: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            if debug:
                raise
            click.echo("Interrupted.", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as e:  # a bug: one line unless --debug
            if debug:
                raise
            click.echo(
                f"Error: internal error {type(e).__name__}: {' '.join(str(e).split())}"
                " (run with --debug for the traceback)", err=True,
            )
            ctx.exit(1)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="dnntool")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors (or set DNNTOOL_DEBUG=1).")
def cli(debug: bool) -> None:
    """Caffe-style deep-learning utilities: prototxt, caffemodel and LMDB tools, cost reports.

    \b
    Examples:
      dnntool demo
      dnntool param-count deploy.prototxt --max 5M
      dnntool flops deploy.prototxt --input-shape data=1,3,224,224 --format markdown
    """


def main() -> None:
    """Console-script entry point."""
    # our errors name the file OpenCV could not read; its own warning would be a second line
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    cli.main(prog_name="dnntool", standalone_mode=True)


if __name__ == "__main__":
    main()
    sys.exit(0)
