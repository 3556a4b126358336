"""``caffegen head``: retarget the classifier (or a segmentation or detection head) to a new number of classes."""

import os
from pathlib import Path

import click

from caffegen.cli.options import (
    STDIN,
    load_net,
    net_argument,
    output_options,
    proto_option,
    report,
    schema_for,
    write_net,
)
from caffegen.defaults import HEAD_LR_MULT
from caffegen.errors import CaffegenError

LABEL_MAP_NAME = "labelmap.prototxt"


@click.command("head")
@net_argument
@click.option("--num-output", type=click.IntRange(min=1), required=True,
              help="Number of classes of the new task (with the background, where the net scores one).")
@click.option("--layer", "layers", metavar="LAYER", multiple=True,
              help="A layer or loss of the class axis to retarget (default: every one). Repeatable.")
@click.option("--name", "new_name", help="New name of the classifier (default: <old>_ft).")
@click.option("--lr-mult", type=click.FloatRange(min=0), default=HEAD_LR_MULT, show_default=True,
              help="Learning-rate multiplier of the new weights (the bias gets twice this).")
@click.option("--label-map", type=click.Path(path_type=str),
              help=f"Where an SSD net's new label map goes (default: {LABEL_MAP_NAME} beside the output).")
@output_options
@proto_option
def head_command(net_path, num_output, layers, new_name, lr_mult, label_map, output, in_place, proto_path):
    """Retarget every layer that states the number of classes, following the class axis back from each loss.

    Score layers are renamed (<old>_ft) so Caffe initialises them fresh, resized, given missing
    fillers (gaussian std 0.01, bias 0) and a faster rate (--lr-mult, the bias twice that, as in
    BVLC's flickr-style example). Fixed upsamplers (FCN's Deconvolutions with lr_mult 0) get the
    new class count as num_output and group, bilinear weights and a new name; SSD's mbox_conf
    convolutions get priors per location × classes, its detection layers num_classes, and a label
    map is written (read SSD nets with --proto and SSD's caffe.proto).
    """
    from caffegen.io.prototxt import write_label_map
    from caffegen.net.head import retarget_head
    loaded = load_net(net_path, proto_path)
    target = output or (net_path if in_place and net_path != STDIN else None)
    label_map = label_map or (str(Path(target).parent / LABEL_MAP_NAME) if target else None)
    reference = os.path.relpath(label_map, Path(target).parent if target else ".") if label_map else None
    result = retarget_head(loaded.net, num_output, layers, new_name, lr_mult, path=net_path, label_map_file=reference)
    if result.label_map is not None and label_map is None:
        raise CaffegenError(f"an SSD net needs a label map for its {num_output} classes: pass -o or --label-map",
                            net_path)
    write_net(loaded.net, net_path, output, in_place)
    report(result.summary())
    if result.label_map is not None:
        write_label_map(label_map, result.label_map, schema_for(proto_path))
        report([f"wrote the label map of the {num_output} classes to {label_map} ({', '.join(result.label_map[:3])}"
                f"{', …' if num_output > 3 else ''}; put your class names in it), which the net's data layers read"])
