"""``dnntool upgrade-net``."""

from __future__ import annotations

import click


@click.command("upgrade-net")
@click.argument("src", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the upgraded file.")
@click.option("--binary/--text", default=None,
              help="Input kind; by default a .caffemodel/.binaryproto name or binary content means binary.")
def cli(src, output, binary):
    """Upgrade an old net (V1 'layers {}', input_dim headers, blobs_lr) to the current format.

    Like Caffe's upgrade_net_proto_text and upgrade_net_proto_binary: text in, text out;
    a .caffemodel in, a .caffemodel out (weights kept). The output is written atomically.

    \b
    Example:
      dnntool upgrade-net old_deploy.prototxt -o deploy.prototxt
      dnntool upgrade-net bvlc_reference_caffenet.caffemodel -o caffenet_v2.caffemodel
    """
    from dnntool.io.atomic import write_bytes
    from dnntool.io.prototxt import read_net, write_prototxt

    if binary is None:
        try:
            with open(src, "rb") as f:
                head = f.read(4096)
        except OSError:
            head = b""  # the reader below reports the missing/unreadable file
        binary = src.endswith((".caffemodel", ".binaryproto")) or b"\0" in head
    if binary:
        from dnntool.io.caffemodel import read_caffemodel

        net = read_caffemodel(src)
        write_bytes(output, net.SerializeToString())
        notes = []
    else:
        s = read_net(src)
        net, notes = s.param, s.notes
        write_prototxt(net, output)
    for n in notes:
        click.echo(f"{src}: {n}", err=True)
    click.echo(f"wrote {output} ({len(net.layer)} layers)", err=True)
