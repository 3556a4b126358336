"""``caffegen freeze``: stop learning up to a layer."""

import click

from caffegen.cli.options import load_net, net_argument, output_options, proto_option, report, write_net
from caffegen.errors import CaffegenError


@click.command("freeze")
@net_argument
@click.option("--upto", metavar="LAYER", help="Freeze LAYER and everything it depends on.")
@click.option("--from", "train_from", metavar="LAYER", help="Train LAYER and everything after it; freeze the rest.")
@output_options
@proto_option
def freeze_command(net_path, upto, train_from, output, in_place, proto_path):
    """Freeze a net up to a layer: lr_mult 0 on every learnable blob, global statistics on BatchNorm.

    Layers are found in the TRAIN phase. What was frozen is reported on standard error.
    """
    if (upto is None) == (train_from is None):
        raise CaffegenError("give exactly one of --upto LAYER and --from LAYER")
    from caffegen.net.freeze import freeze
    loaded = load_net(net_path, proto_path)
    result = freeze(loaded.net, upto=upto, train_from=train_from, path=net_path)
    write_net(loaded.net, net_path, output, in_place)
    report(result.summary())
