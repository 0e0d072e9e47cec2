"""Option decorators shared by commands, defined once so their help stays consistent."""

from __future__ import annotations

import re

import click

FORMATS = ("table", "json", "csv", "markdown")


def parse_input_shapes(values: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """``data=1,3,224,224`` (repeatable, or several separated by ';'); a bare ``1,3,224,224`` is the first input."""
    shapes: dict[str, tuple[int, ...]] = {}
    for value in values:
        for item in filter(None, (v.strip() for v in value.split(";"))):
            name, _, dims = item.rpartition("=")
            parts = re.split(r"[,x ]+", dims.strip())
            try:
                shape = tuple(int(p) for p in parts if p)
            except ValueError:
                raise click.BadParameter(f"'{item}': expected NAME=N,C,H,W with integers") from None
            if not shape or any(d <= 0 for d in shape):
                raise click.BadParameter(f"'{item}': dimensions must be positive integers")
            shapes[name.strip()] = shape
    return shapes


def input_shape_option(f):
    return click.option(
        "--input-shape", "input_shapes", multiple=True, metavar="NAME=N,C,H,W",
        help="Shape of a data layer's top (repeatable); overrides the prototxt or data source."
             " A bare N,C,H,W applies to the first input.",
    )(f)


def phase_option(f):
    return click.option(
        "--phase", type=click.Choice(["train", "test"], case_sensitive=False), default="test",
        show_default=True, help="Net phase (include/exclude rules).",
    )(f)


def stage_options(f):
    f = click.option("--stage", "stages", multiple=True, help="Net stage (repeatable).")(f)
    return click.option("--level", type=int, default=0, help="Net level.")(f)


def format_option(f):
    return click.option(
        "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
        help="Report format.",
    )(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Same as --format json.")(f)


def quiet_option(f):
    return click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors (the exit status tells).")(f)


def max_option(what: str):
    def deco(f):
        return click.option(
            "--max", "limit", metavar="COUNT",
            help=f"Fail (exit 1) when the total {what} exceeds COUNT; K/M/G/T suffixes (e.g. 5M).",
        )(f)
    return deco


def load_net(path: str, phase: str, stages=(), level: int = 0, input_shapes=()):
    """Build a Net for a command (imports the library lazily)."""
    from dnntool.net import Net

    shapes = parse_input_shapes(input_shapes)
    return Net.from_prototxt(path, phase=phase, stages=stages, level=level, input_shapes=shapes)


def jobs_option(f):
    return click.option(
        "-j", "--jobs", type=click.IntRange(min=0), default=None, metavar="N",
        help="Worker processes (default: all cores; 1 runs in this process).",
    )(f)


_GFLAGS_TRUE, _GFLAGS_FALSE = ("true", "t", "yes", "y", "1"), ("false", "f", "no", "n", "0")


class CaffeFlagsCommand(click.Command):
    """A command that also accepts Caffe's gflags spellings of its options: ``--resize_height=256``
    for ``--resize-height 256``, and ``--shuffle=true`` / ``--shuffle=false`` for boolean flags."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        flags = {name for p in self.params if isinstance(p, click.Option) and p.is_flag
                 for name in p.opts}
        out: list[str] = []
        for i, arg in enumerate(args):
            if arg == "--":
                out += args[i:]
                break
            if arg.startswith("--") and len(arg) > 2:
                name, eq, value = arg.partition("=")
                name = "--" + name[2:].replace("_", "-")
                if eq and name in flags:
                    if value.lower() in _GFLAGS_TRUE:
                        out.append(name)
                        continue
                    if value.lower() in _GFLAGS_FALSE:
                        continue
                arg = name + eq + value
            out.append(arg)
        return super().parse_args(ctx, out)


def device_option(f):
    return click.option(
        "--device", default="auto", show_default=True, metavar="auto|cpu|cuda[:N]",
        help="Where ONNX Runtime runs: auto takes CUDA when onnxruntime has it and a GPU is present.",
    )(f)


def timing_options(f):
    """``--batches``/``--repeat``/``--db``: what the slimming commands time before and after on."""
    f = click.option("--db", "timing_db", type=click.Path(),
                     help="Time (and compare outputs) on records of this LMDB, through the input layer's"
                          " transform, instead of random inputs.")(f)
    f = click.option("--repeat", type=click.IntRange(min=1), default=3, show_default=True,
                     help="Timed rounds over the batches.")(f)
    return click.option("--batches", type=click.IntRange(min=0), default=3, show_default=True,
                        help="Batches to time before and after on (0: no timing).")(f)


def model_arguments(f):
    """NET (prototxt) and WEIGHTS (caffemodel): what the slimming commands rewrite."""
    f = click.argument("weights", type=click.Path(dir_okay=False))(f)
    return click.argument("net", type=click.Path(dir_okay=False))(f)


def report_options(f):
    """``--input-shape``, the timing options, ``--device`` and ``--json``: the before/after report
    every slimming command prints."""
    for option in (json_option, device_option, timing_options, input_shape_option):
        f = option(f)
    return f


def echo_report(rep, as_json: bool) -> None:
    """A slimming report as text lines or JSON."""
    import json

    click.echo(json.dumps(rep.to_dict(), indent=2) if as_json else "\n".join(rep.lines()))
