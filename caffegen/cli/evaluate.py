"""``caffegen evaluate``: a trained model's metrics, confusion matrix, mistakes and report, from real Caffe."""

from pathlib import Path

import click

from caffegen.cli.options import device_options, engine_option, force_option
from caffegen.errors import CaffegenError
from caffegen.reporting import reporter_for_stderr


@click.command("evaluate")
@click.argument("model_path", metavar="RUN", type=click.Path(path_type=str))
@click.option("--data", type=click.Path(path_type=str), help="Labelled images to evaluate on: one folder per class "
              "(a segmentation: images/ and masks/).")
@click.option("--list", "list_file", type=click.Path(path_type=str), help="A Caffe list ('path label') to evaluate on.")
@click.option("--weights", type=click.Path(path_type=str),
              help="Weights to evaluate (default: the run's trained model).")
@click.option("--skip-bad", is_flag=True, help="With --data: leave out files that are not readable images.")
@click.option("-o", "--output", type=click.Path(path_type=str), help="The folder to write (default: RUN/eval).")
@force_option("Replace an existing output folder.")
@device_options
@engine_option
def evaluate_command(model_path, data, list_file, weights, skip_bad, output, force, batch_size, gpu, caffe_path,
                     engine):
    """Run the trained model of RUN (a run directory or an exported bundle) over labelled images with Caffe.

    By default the run's validation images (--engine: another engine, once it agrees with Caffe on
    the first mini-batch; metrics.json records which computed them, and how fast). Writes
    predictions.csv, metrics.json (top-1, top-5, mean class accuracy, per-class precision/recall/F1),
    confusion.csv/.png, mistakes.png and a self-contained report.html. A segmentation is scored over
    pixels: pixel accuracy, mean and per-class IoU, a confusion matrix of pixels, and
    contact_sheet.png (image, true and predicted mask) in place of mistakes.png.
    """
    from caffegen.job.device import CPU
    from caffegen.job.model import load_model
    from caffegen.job.rundir import EVAL_DIR
    from caffegen.run.evaluate import evaluate_to, evaluation_images, metrics_line
    from caffegen.run.report import REPORT
    from caffegen.run.target import resolve_target
    reporter = reporter_for_stderr()
    if data and list_file:
        raise CaffegenError("give --data or --list, not both")
    model = load_model(model_path, weights)
    if model.run is None and not (data or list_file):
        raise CaffegenError("a model bundle has no validation images: pass --data DIR or --list FILE", model_path)
    out_dir = Path(output) if output else model.source / EVAL_DIR
    if out_dir.exists() and not force:
        raise CaffegenError("exists; pass --force to replace it, or choose another folder with -o", out_dir)
    images = evaluation_images(model, data, list_file, skip_bad, reporter.line)
    target = resolve_target(caffe_path, gpu)
    device = target.launch_device(model.run.device if model.run else CPU, reporter)
    metrics = evaluate_to(target, model, images, out_dir, batch_size, device, reporter, engine)
    click.echo(metrics_line(metrics))
    reporter.line(f"report: {out_dir / REPORT}")
