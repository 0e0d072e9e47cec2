"""``dnntool demo``."""

from __future__ import annotations

import click


@click.command("demo")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="dnntool-demo", show_default=True,
              help="Directory for the artifacts.")
def cli(out_dir):
    """Run the pipeline on the bundled sample nets and list the artifacts.

    Today the pipeline is: upgrade a V1 net, then param-count and flops (with --max checks) on the
    bundled LeNet and the upgraded net. It grows as the other commands land.

    \b
    Example:
      dnntool demo --out /tmp/demo
    """
    from dnntool.tools.demo import run_demo

    summary = run_demo(out_dir, echo=click.echo)
    click.echo("")
    click.echo("artifacts:")
    for path in summary["artifacts"]:
        click.echo(f"  {path}")
