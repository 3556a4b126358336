"""``caffegen head``: retarget the classifier to a new number of classes."""

import click

from caffegen.cli.options import load_net, net_argument, output_options, proto_option, report, write_net
from caffegen.defaults import HEAD_LR_MULT
from caffegen.net.head import retarget_head


@click.command("head")
@net_argument
@click.option("--num-output", type=click.IntRange(min=1), required=True, help="Number of classes of the new task.")
@click.option("--layer", "layers", metavar="LAYER", multiple=True,
              help="The classifier to retarget (default: every layer feeding a Softmax). Repeatable.")
@click.option("--name", "new_name", help="New name of the classifier (default: <old>_ft).")
@click.option("--lr-mult", type=click.FloatRange(min=0), default=HEAD_LR_MULT, show_default=True,
              help="Learning-rate multiplier of the new weights (the bias gets twice this).")
@output_options
@proto_option
def head_command(net_path, num_output, layers, new_name, lr_mult, output, in_place, proto_path):
    """Retarget the classifier: rename it so Caffe initialises it fresh, and set num_output.

    Missing fillers are added (gaussian std 0.01, bias 0) and the new layer learns faster
    (--lr-mult, its bias twice that, as in BVLC's flickr-style fine-tuning example).
    """
    loaded = load_net(net_path, proto_path)
    result = retarget_head(loaded.net, num_output, layers, new_name, lr_mult, path=net_path)
    write_net(loaded.net, net_path, output, in_place)
    report(result.summary())
