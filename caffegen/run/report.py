"""The files of an evaluation: predictions and metrics for programs, plots and one HTML page for people.

``predictions.csv``, ``metrics.json``, ``confusion.csv`` and ``confusion.png``, ``mistakes.png`` (a
contact sheet of the most confident wrong predictions) and ``report.html``, which embeds the
plots, so the page can be mailed or archived on its own. A segmentation's predictions.csv scores
each image, its confusion matrix counts pixels, and ``contact_sheet.png`` (image, true mask,
predicted mask of the worst images) takes the place of mistakes.png. The folder is built beside its place
and renamed into it, so it is never seen half-written.
"""

import base64
import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caffegen.defaults import IGNORE_LABEL
from caffegen.io.files import built_beside
from caffegen.io.segdata import voc_palette
from caffegen.io.templates import render_template
from caffegen.job.options import CLASSIFICATION, SEGMENTATION
from caffegen.run.plots import plain_text

MISTAKES_SHOWN = 16
SHEET_SHOWN = 8
PREDICTIONS, METRICS, CONFUSION_CSV, CONFUSION_PNG, MISTAKES_PNG, SHEET_PNG, REPORT = (
    "predictions.csv", "metrics.json", "confusion.csv", "confusion.png", "mistakes.png", "contact_sheet.png",
    "report.html")


def write_evaluation(evaluation, out_dir, model, curves=None):
    """Write the evaluation's files into the folder ``out_dir``; return its metrics."""
    metrics = evaluation.metrics()
    report = REPORTS[evaluation.task]
    with built_beside(out_dir) as staging:
        report.predictions(evaluation, staging / PREDICTIONS)
        (staging / METRICS).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        _write_confusion_csv(evaluation, staging / CONFUSION_CSV)
        plots = {CONFUSION_PNG: confusion_png(evaluation), report.sheet: report.draw_sheet(evaluation)}
        for name, data in plots.items():
            (staging / name).write_bytes(data)
        if curves is not None and Path(curves).is_file():
            plots["curves.png"] = Path(curves).read_bytes()
        (staging / REPORT).write_text(_report_html(metrics, plots, model), encoding="utf-8")
    return metrics


def _write_predictions(evaluation, path):
    k = min(5, len(evaluation.classes))
    ranked, names = evaluation.ranked(k), evaluation.classes
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["path", "true_label", "predicted_label", "correct"]
                        + [f"top{i}_{what}" for i in range(1, k + 1) for what in ("label", "probability")])
        for row, (path_, label) in enumerate(zip(evaluation.paths, evaluation.labels)):
            top = [cell for j in ranked[row] for cell in (names[j], f"{evaluation.probabilities[row, j]:.6g}")]
            writer.writerow([path_, names[label], names[ranked[row, 0]], int(ranked[row, 0] == label)] + top)


def _write_image_scores(evaluation, path):
    """A segmentation's predictions.csv: each image and mask with its pixel accuracy and mean IoU."""
    scores = evaluation.image_scores()
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["path", "mask", "pixel_accuracy", "mean_iou"])
        for index, (image, mask) in enumerate(zip(evaluation.paths, evaluation.mask_paths)):
            counts = evaluation.confusion(index)
            writer.writerow([image, mask, f"{np.trace(counts) / max(counts.sum(), 1):.6g}", f"{scores[index]:.6g}"])


def _write_confusion_csv(evaluation, path):
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["true \\ predicted", *evaluation.classes])
        for name, row in zip(evaluation.classes, evaluation.confusion()):
            writer.writerow([name, *map(int, row)])


def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _png(figure):
    image = io.BytesIO()
    figure.savefig(image, format="png")
    return image.getvalue()


@plain_text
def confusion_png(evaluation):
    """The confusion matrix as a PNG: rows normalised to the true class's share, counts written in when few."""
    counts = evaluation.confusion()
    shares = counts / counts.sum(axis=1, keepdims=True).clip(min=1)
    size = len(evaluation.classes)
    side = min(4 + 0.45 * size, 20)
    figure = _figure(side + 1.5, side)
    axis = figure.subplots()
    shown = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(shown, ax=axis, label="share of the true class")
    if size <= 40:
        axis.set_xticks(range(size), evaluation.classes, rotation=90)
        axis.set_yticks(range(size), evaluation.classes)
    if size <= 25:
        for (row, column), count in ((index, counts[index]) for index in zip(*counts.nonzero())):
            axis.text(column, row, str(count), ha="center", va="center",
                      color="white" if shares[row, column] > 0.5 else "black", fontsize=8)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    pixels = f", {int(counts.sum())} pixels" if REPORTS[evaluation.task].counts_pixels else ""
    axis.set_title(f"Confusion matrix ({len(evaluation.paths)} images{pixels})")
    return _png(figure)


@plain_text
def mistakes_png(evaluation):
    """A contact sheet of the most confident wrong predictions, each titled with its true and predicted class."""
    from PIL import Image

    shown = evaluation.mistakes(MISTAKES_SHOWN)
    columns = 4 if len(shown) > 4 else max(len(shown), 1)
    rows = max(1, -(-len(shown) // columns))
    figure = _figure(3 * columns, 3.2 * rows)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis in axes:
        axis.axis("off")
    if not len(shown):
        axes[0].text(0.5, 0.5, "no wrong predictions", ha="center", va="center")
    for axis, index in zip(axes, shown):
        with Image.open(evaluation.paths[index]) as image:
            axis.imshow(image.convert("RGB"))
        names = evaluation.classes
        axis.set_title(f"true {names[evaluation.labels[index]]}\npredicted {names[evaluation.predicted[index]]} "
                       f"({evaluation.confidence[index]:.2f})", fontsize=9)
    figure.suptitle("Most confident mistakes")
    return _png(figure)


def coloured(mask):
    """(H, W, 3) uint8 colours of the class indices ``mask`` in VOC's colour map (ignored pixels white)."""
    palette = np.asarray(voc_palette(), dtype=np.uint8)
    palette[IGNORE_LABEL] = 255
    return palette[np.asarray(mask).clip(0, 255)]


@plain_text
def contact_sheet_png(evaluation):
    """A contact sheet of the images of lowest mean IoU: each image, its true mask and the predicted mask."""
    from PIL import Image

    shown, scores = evaluation.worst(SHEET_SHOWN), evaluation.image_scores()
    figure = _figure(7.5, 2.6 * max(len(shown), 1))
    axes = figure.subplots(max(len(shown), 1), 3, squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for row, index in zip(axes, shown):
        with Image.open(evaluation.paths[index]) as image:
            row[0].imshow(image.convert("RGB"))
        row[1].imshow(coloured(evaluation.masks[index]), interpolation="nearest")
        row[2].imshow(coloured(evaluation.predicted[index]), interpolation="nearest")
        row[0].set_title(Path(evaluation.paths[index]).name, fontsize=9)
        row[1].set_title("true mask", fontsize=9)
        row[2].set_title(f"predicted (IoU {scores[index]:.2f})", fontsize=9)
    figure.suptitle("Images of lowest mean IoU")
    return _png(figure)


def _report_html(metrics, plots, model):
    images = {name: "data:image/png;base64," + base64.b64encode(data).decode("ascii") for name, data in plots.items()}
    recorded = model.run.manifest.to_record() if model.run else {}
    settings = {key: recorded[key] for key in ("freeze", "schedule", "base_lr", "device", "features_engine")
                if key in recorded}
    settings.update(weights=str(model.weights), preprocessing=model.preprocessing)
    if "engine" in metrics:  # what computed the probabilities evaluated here, and how fast
        settings["evaluated_by"] = f"{metrics['engine']} at {metrics['images_per_second']} img/s"
    return render_template("report.html.j2", metrics=metrics, images=images, source=str(model.source),
                           settings={key: json.dumps(value) for key, value in settings.items() if value is not None})


@dataclass(frozen=True)
class TaskReport:
    """What an evaluation folder of a task holds beside its metrics: its predictions.csv and its contact sheet."""

    predictions: object  # (evaluation, path): writes predictions.csv
    sheet: str  # the contact sheet's file name
    draw_sheet: object  # (evaluation) -> the contact sheet's PNG
    counts_pixels: bool  # whether its confusion matrix counts pixels rather than images


REPORTS = {
    CLASSIFICATION: TaskReport(_write_predictions, MISTAKES_PNG, mistakes_png, counts_pixels=False),
    SEGMENTATION: TaskReport(_write_image_scores, SHEET_PNG, contact_sheet_png, counts_pixels=True),
}
