"""``caffegen predict``: the top classes (or the masks) of new images, from a run directory or an exported bundle."""

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from caffegen.cli.options import device_options, engine_option, force_option
from caffegen.errors import CaffegenError
from caffegen.io.tables import text_table
from caffegen.job.options import CLASSIFICATION, SEGMENTATION
from caffegen.reporting import reporter_for_stderr


@click.command("predict")
@click.argument("model_path", metavar="MODEL", type=click.Path(path_type=str))
@click.argument("images", metavar="IMAGE|DIR…", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--top-k", type=click.IntRange(min=1), default=5, show_default=True, help="Classes shown per image.")
@click.option("--weights", type=click.Path(path_type=str), help="Weights to use (default: the model's trained ones).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV instead of a table.")
@click.option("-o", "--output", type=click.Path(path_type=str),
              help="A segmentation model's folder of mask PNGs (default: ./masks).")
@force_option("Replace an existing --output folder.")
@device_options
@engine_option
def predict_command(model_path, images, top_k, weights, as_json, as_csv, output, force, batch_size, gpu, caffe_path,
                    engine):
    """Classify IMAGE files (or every image under DIR) with MODEL, a run directory or an exported bundle.

    Images are preprocessed as the model was trained; unreadable files are reported and skipped.
    A segmentation model writes one mask PNG per image (VOC's colours, pixel value = class) to --output.
    """
    from caffegen.job.device import CPU
    from caffegen.job.model import load_model
    from caffegen.run.target import resolve_target
    reporter = reporter_for_stderr()
    model = load_model(model_path, weights)
    target = resolve_target(caffe_path, gpu)
    device = target.launch_device(model.run.device if model.run else CPU, reporter)
    asked = Asked(images, top_k, as_json, as_csv, output, force, batch_size, engine)
    SHOWN[model.task](target, model, device, asked, reporter)


@dataclass(frozen=True)
class Asked:
    """What the command line asks of a prediction beside the model: the images and how to give the results."""

    images: tuple
    top_k: int
    as_json: bool
    as_csv: bool
    output: str
    force: bool
    batch_size: int
    engine: str


def _write_masks(target, model, device, asked, reporter):
    """A segmentation's predictions: one mask PNG per image, in --output."""
    from caffegen.run.predict import predict_masks
    out_dir = Path(asked.output or "masks")
    if out_dir.exists() and not asked.force:
        raise CaffegenError("exists; pass --force to replace it, or choose another folder with -o", out_dir)
    written = predict_masks(target, model, asked.images, out_dir, asked.batch_size, device, reporter, asked.engine)
    click.echo(f"wrote {len(written)} mask(s) to {out_dir}")


def _print_top_classes(target, model, device, asked, reporter):
    """A classifier's predictions: each image's top classes, as a table, JSON or CSV."""
    from caffegen.run.predict import predict
    predictions = predict(target, model, asked.images, min(asked.top_k, len(model.classes)), asked.batch_size,
                          device, reporter, asked.engine)
    if asked.as_json:
        click.echo(json.dumps([{"path": str(p.path), "top": [{"class": name, "probability": probability}
                                                             for name, probability in p.top]}
                               for p in predictions], indent=2))
    elif asked.as_csv:
        writer = csv.writer(sys.stdout)
        k = len(predictions[0].top)
        writer.writerow(["path"] + [f"top{i}_{what}" for i in range(1, k + 1) for what in ("label", "probability")])
        for p in predictions:
            writer.writerow([p.path] + [cell for name, probability in p.top for cell in (name, f"{probability:.6g}")])
    else:
        header = ["image"] + [f"#{i}" for i in range(1, len(predictions[0].top) + 1)]
        rows = [[_shown(p.path)] + [f"{name} {probability:.3f}" for name, probability in p.top] for p in predictions]
        for line in text_table(header, rows):
            click.echo(line)


# How each task's predictions are given.
SHOWN = {CLASSIFICATION: _print_top_classes, SEGMENTATION: _write_masks}


def _shown(path):
    """``path`` relative to the current folder when it lies under it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
