"""``caffegen export``: a run's trained model as a bundle for Caffe, OpenCV DNN and edge toolchains."""

import json

import click

from caffegen.cli.options import CAFFE_OPTION, force_option
from caffegen.errors import CaffegenError
from caffegen.reporting import reporter_for_stderr
from caffegen.run.export.formats import CAFFE_FORMAT, FORMATS

CHECK_IMAGES = 50


@click.command("export")
@click.argument("run_dir", metavar="RUN", type=click.Path(path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(path_type=str),
              help="The bundle to write: a folder, or a FILE.tar.gz.")
@click.option("--weights", type=click.Path(path_type=str), help="Weights to ship (default: the run's trained model).")
@click.option("--format", "formats", default=CAFFE_FORMAT, show_default=True, callback=lambda ctx, param, value:
              parse_formats(value), help="The formats to put in the bundle, comma-separated: "
              + "; ".join(f"{name}: {exporter.description}" for name, exporter in FORMATS.items()) + ".")
@force_option("Replace an existing bundle.")
@click.option("--fold-bn", is_flag=True, help="Fold each BatchNorm (and the Scale after it) into the Convolution or "
              "InnerProduct before it, in every format, once real Caffe computes the same outputs with the folded "
              "model.")
@click.option("--check-opencv", "check_opencv_", is_flag=True,
              help="Load the bundle with OpenCV DNN (4.x) and compare its probabilities with real Caffe's.")
@click.option("--check-images", type=click.IntRange(min=1), default=CHECK_IMAGES, show_default=True,
              help="Validation images the OpenCV check compares on.")
@CAFFE_OPTION
def export_command(run_dir, output, weights, formats, force, fold_bn, check_opencv_, check_images, caffe_path):
    """Write RUN's trained model in each --format, with labels.txt, preprocessing.json, info.json and README.md.

    caffe: deploy.prototxt and model.caffemodel (and the mean file when the model subtracts one);
    onnx: model.onnx, written only once ONNX Runtime agrees with real Caffe. info.json records
    where the model comes from, each file's SHA-256 and, when `caffegen evaluate` has run, its metrics.
    """
    from caffegen.job.model import load_model
    from caffegen.job.options import OPENCV
    from caffegen.job.rundir import EVAL_DIR
    from caffegen.run.engines.agreement import check_engine
    from caffegen.run.evaluate import evaluation_images
    from caffegen.run.export.bundle import export_bundle
    from caffegen.run.report import METRICS
    from caffegen.run.target import resolve_target
    reporter = reporter_for_stderr()
    if check_opencv_ and CAFFE_FORMAT not in formats:
        raise click.UsageError("--check-opencv checks the caffe format: add it to --format")
    model = load_model(run_dir, weights)
    if model.run is None:
        raise CaffegenError("already a bundle: export takes a run directory", run_dir)
    evaluated = model.source / EVAL_DIR / METRICS
    metrics = json.loads(evaluated.read_text(encoding="utf-8")) if evaluated.is_file() else None
    if metrics:
        metrics = {key: value for key, value in metrics.items() if key != "per_class"}
    target = resolve_target(caffe_path, "cpu")
    bundle = export_bundle(model, output, force, metrics, formats, target, reporter, fold_bn)
    reporter.line(f"wrote {bundle}")
    if check_opencv_:
        images = evaluation_images(model)[:check_images]
        check = check_engine(OPENCV, target, load_model(bundle), [path for path, _ in images], reporter=reporter)
        click.echo(check.line())
        if not check.passed:
            raise CaffegenError("OpenCV DNN and Caffe disagree on this model: ship it for Caffe only, or see which "
                                "layer differs with OpenCV's own tools")


def parse_formats(value):
    """The formats ``--format`` names (``caffe,onnx``), each once, in order; an unknown one is a usage error."""
    names = list(dict.fromkeys(name.strip() for name in value.split(",") if name.strip()))
    unknown = [name for name in names if name not in FORMATS]
    if unknown or not names:
        raise click.BadParameter(f"{', '.join(unknown) or 'none given'}: choose from {', '.join(FORMATS)}")
    return tuple(names)

