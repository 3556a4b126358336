"""``caffegen advise``: which of the four fine-tuning cases applies, and the ``caffegen prepare`` line for it."""

import json
import textwrap

import click

from caffegen.io.prototxt import read_net
from caffegen.net.advise import SMALL_DATASET_IMAGES, SMALL_DATASET_PER_CLASS, advise

WIDTH = 100


@click.command("advise")
@click.option("--net", "net_path", required=True, type=click.Path(path_type=str),
              help="The base net: the train_val .prototxt (or deploy net) you will fine-tune.")
@click.option("--train-images", required=True, type=int, metavar="N",
              help=f"How many training images you have; fewer than {SMALL_DATASET_IMAGES} (or, with --classes, "
                   f"fewer than {SMALL_DATASET_PER_CLASS} a class) is a small dataset.")
@click.option("--similarity", required=True, metavar="high|low",
              help="How much your images look like the pretraining data (ImageNet photos for the BVLC models).")
@click.option("--classes", type=int, metavar="K", help="How many classes: the size is then also judged per class.")
@click.option("--weights", type=click.Path(path_type=str), help="The pretrained .caffemodel, for the command line.")
@click.option("--data", type=click.Path(path_type=str), help="Your image folder, for the command line.")
@click.option("--json", "as_json", is_flag=True, help="Print the advice as JSON.")
def advise_command(net_path, train_images, similarity, classes, weights, data, as_json):
    """Say how to fine-tune NET on your images, and print the `caffegen prepare` line that does it.

    Four cases, by dataset size and similarity to the pretraining data: small and similar, a linear
    classifier on the bottleneck features; large and similar, fine-tune the whole net at a tenth of the
    original learning rate; small and different, train from a block boundary around the middle of
    the trunk; large and different, fine-tune everything, longer and faster. Freeze points are
    found in the net's TRAIN data flow and named by layer.
    """
    net = read_net(net_path).net
    advice = advise(net, train_images, similarity, classes, net_path, weights, data)
    if as_json:
        click.echo(json.dumps(advice.to_json(), indent=2))
    else:
        for line in render(advice):
            click.echo(line)


def render(advice):
    """The advice as lines of plain text."""
    similar = "similar to" if advice.similarity == "high" else "different from"
    yield f"case {advice.case}: a {advice.dataset} dataset {similar} the pretraining data ({advice.size_rule})"
    yield f"strategy: {advice.title}"
    yield from textwrap.wrap(advice.strategy, WIDTH, initial_indent="  ", subsequent_indent="  ")
    yield f"classifier: {advice.classifier}; bottleneck: {advice.bottleneck}"
    yield f"freeze: {f'up to {advice.freeze_upto}' if advice.freeze_upto else 'nothing'}"
    yield (f"learning rate: {advice.base_lr:g}, new classifier ×{advice.head_lr_mult:g}; "
           f"epochs: {advice.epochs}")
    yield "run:"
    yield f"  {advice.command_line}"
