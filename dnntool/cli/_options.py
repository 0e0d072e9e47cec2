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
