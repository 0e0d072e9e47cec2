"""``dnntool demo``."""

from __future__ import annotations

import click

from dnntool.cli._options import device_option


@click.command("demo")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="dnntool-demo", show_default=True,
              help="Directory for the artifacts.")
@click.option("--fast", is_flag=True, help="Train for fewer iterations (for tests; still >= 90% accuracy).")
@device_option
def cli(out_dir, fast, device):
    """Run the whole pipeline on scikit-learn's handwritten digits and list the artifacts.

    digits -> 28x28 PNGs and list files (seeded, stratified 80/20 split) -> convert-images (train
    and test LMDBs) -> compute-image-mean -> param-count/flops with CI limits -> netscope -> train
    a LeNet with BatchNorm -> test -> featuremap-dump -> fold-bn, prune (structured), quantize
    int8 and fp16 -> test each model; then a table of accuracy, params, MACs, file size and time.
    Seeded: a second run writes the same files (the timings aside). Needs scikit-learn
    (pip install 'dnntool[demo]').

    \b
    Example:
      dnntool demo --out /tmp/demo
    """
    from dnntool.errors import DnnToolError

    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise DnnToolError("the demo needs scikit-learn for its digits: pip install 'dnntool[demo]'") from None
    from dnntool.tools.demo import run_demo

    res = run_demo(out_dir, echo=click.echo, fast=fast, device=device)
    click.echo("")
    for line in res.table():
        click.echo(line)
    click.echo("")
    click.echo("artifacts:")
    for path in res.artifacts:
        click.echo(f"  {path}")
