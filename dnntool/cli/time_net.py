"""``dnntool time``."""

from __future__ import annotations

import json

import click

from dnntool.cli._options import (
    device_option,
    input_shape_option,
    json_option,
    load_net,
    stage_options,
)


@click.command("time")
@click.option("--model", required=True, type=click.Path(dir_okay=False), help="Net prototxt.")
@click.option("--iterations", type=int, default=50, show_default=True, help="Timed iterations.")
@click.option("--phase", type=click.Choice(["train", "test"], case_sensitive=False), default="train",
              show_default=True, help="train: forward and backward (the net needs a loss); test: forward.")
@device_option
@input_shape_option
@stage_options
@click.option("--top", type=int, default=10, show_default=True, help="Also list the N slowest kernels.")
@json_option
def cli(model, iterations, phase, device, input_shapes, stages, level, top, as_json):
    """Time each layer's forward and backward pass, as `caffe time`.

    ONNX Runtime's profiler runs over the training step's gradient model (or the forward model with
    --phase test); each kernel is mapped back to the Caffe layer that emitted it, backward kernels
    apart. One warm-up iteration, then the mean over --iterations. Inputs are synthetic (noise;
    zeros for labels), so data sources need not exist (give --input-shape when their shape cannot be
    read). Kernel times exclude the session's own overhead, which the wall time per iteration adds.

    \b
    Example:
      dnntool time --model lenet_train_test.prototxt --iterations 20
      dnntool time --model deploy.prototxt --phase test --input-shape data=32,3,224,224 --json
    """
    from dnntool.train.timing import time_net

    net = load_net(model, phase.lower(), stages, level, input_shapes)
    res = time_net(net, iterations, device, phase.lower())
    if as_json:
        click.echo(json.dumps(res.to_dict(top), indent=2))
        return
    click.echo(f"{res.model}: {res.phase.upper()} phase, {res.iterations} iterations on {res.provider}")
    width = max([len(t.name) for t in res.layers] + [5])
    click.echo(f"{'layer':<{width}}  {'type':<18} {'forward ms':>10} {'backward ms':>11}")
    for t in res.layers:
        click.echo(f"{t.name:<{width}}  {t.type:<18} {t.forward_ms:10.3f} {t.backward_ms:11.3f}")
    click.echo(f"Average Forward pass: {res.forward_ms:.3f} ms.")
    if res.phase == "train":
        click.echo(f"Average Backward pass: {res.backward_ms:.3f} ms.")
        click.echo(f"Average Forward-Backward: {res.forward_ms + res.backward_ms:.3f} ms.")
    click.echo(f"Wall time per iteration: {res.wall_ms:.3f} ms.")
    if top > 0:
        click.echo(f"Slowest kernels (of {len(res.nodes)}):")
        for n in res.nodes[:top]:
            kind = "backward" if n.backward else "forward"
            click.echo(f"  {n.ms:8.3f} ms  {n.op:<14} {n.node}  ({n.layer}, {kind})")
