"""``caffegen upgrade``: rewrite a legacy V1 net, and its caffemodel, in the current format."""

from pathlib import Path

import click

from caffegen.cli.options import load_net, net_argument, output_options, report, write_net
from caffegen.errors import CaffegenError


@click.command("upgrade")
@net_argument
@output_options
@click.option("--weights", "weights_path", metavar="OLD.caffemodel", type=click.Path(path_type=str),
              help="A caffemodel to upgrade as well.")
@click.option("--weights-out", metavar="NEW.caffemodel", type=click.Path(path_type=str),
              help="Where to write the upgraded caffemodel.")
def upgrade_command(net_path, output, in_place, weights_path, weights_out):
    """Rewrite a V1 net (layers { type: CONVOLUTION }) as current layer {} entries.

    As Caffe's upgrade_net_proto_text does for the net, and upgrade_net_proto_binary for the
    caffemodel given with --weights (written to --weights-out, its blobs copied unchanged).
    """
    if (weights_path is None) != (weights_out is None):
        raise CaffegenError("give --weights and --weights-out together")
    if weights_path and Path(weights_path).resolve() == Path(weights_out).resolve() and not in_place:
        raise CaffegenError("refusing to overwrite the input weights; pass --in-place to do that", weights_out)
    loaded = load_net(net_path, None)
    if weights_path:
        # The weights first: a damaged caffemodel then leaves no upgraded net behind either.
        from caffegen.io.caffemodel import upgrade_caffemodel
        was_v1 = upgrade_caffemodel(weights_path, weights_out)
    write_net(loaded.net, net_path, output, in_place)
    if not loaded.upgraded_from:
        report([f"{net_path}: already in the current format; written unchanged"])
    if weights_path:
        report([f"{weights_path}: " + ("upgraded legacy V1 layers to the current format"
                                       if was_v1 else "already in the current format; copied unchanged")
                + f" in {weights_out}"])
