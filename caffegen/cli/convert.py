"""``caffegen convert``: a Caffe deploy net and its weights as an ONNX model, checked against real Caffe."""

import click

from caffegen.cli.options import CAFFE_OPTION, force_option, proto_option
from caffegen.reporting import reporter_for_stderr


@click.command("convert")
@click.argument("deploy", metavar="DEPLOY.prototxt", type=click.Path(path_type=str))
@click.argument("weights", metavar="WEIGHTS.caffemodel", type=click.Path(path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(path_type=str), help="The .onnx file to write.")
@proto_option
@click.option("--batch", type=click.IntRange(min=1), help="Fix the batch size (default: dynamic).")
@click.option("--fold-bn", is_flag=True,
              help="Fold each BatchNorm (and the Scale after it) into the Convolution or InnerProduct before it.")
@force_option("Replace an existing output file.")
@CAFFE_OPTION
def convert_command(deploy, weights, output, proto_path, batch, fold_bn, force, caffe_path):
    """Convert DEPLOY.prototxt + WEIGHTS.caffemodel to ONNX, written only once ONNX Runtime agrees with real Caffe
    on a random input (probabilities within 1e-4, other outputs within 1e-4 of their scale)."""
    from caffegen.run.convert import convert_to_onnx
    from caffegen.run.target import resolve_target
    check = convert_to_onnx(deploy, weights, output, resolve_target(caffe_path, "cpu"), proto_path, batch, fold_bn,
                            reporter_for_stderr(), force)
    click.echo(check.line())
