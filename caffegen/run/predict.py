"""Classifying or segmenting new images with a trained model and real Caffe (or another engine once it agrees with
Caffe), in batches, skipping what is no image."""

from dataclasses import dataclass
from pathlib import Path

from caffegen.defaults import FORWARD_BATCH
from caffegen.errors import CaffegenError
from caffegen.io.files import built_beside
from caffegen.io.segdata import write_mask_png
from caffegen.job.dataset import image_problem
from caffegen.job.options import CAFFE
from caffegen.reporting import SilentReporter
from caffegen.run.engines.probabilities import model_probabilities
from caffegen.run.evaluate import segment


@dataclass(frozen=True)
class Prediction:
    """One image's most probable classes, as (class name, probability), most probable first."""

    path: Path
    top: list


def image_files(arguments):
    """(image files, [(path, why skipped)]) named by ``arguments``: files, or folders searched recursively.

    In a folder, files that are no image by their extension are passed over in silence.
    """
    found, skipped = [], []
    for argument in map(Path, arguments):
        if not argument.exists():
            skipped.append((argument, "no such file or folder"))
            continue
        candidates = sorted(p for p in argument.rglob("*") if p.is_file()) if argument.is_dir() else [argument]
        for path in candidates:
            problem = image_problem(path)
            if not problem:
                found.append(path.resolve())
            elif not (argument.is_dir() and problem.startswith("not an image file")):
                skipped.append((path, problem))
    return found, skipped


def _readable_images(arguments, reporter):
    """The image files named by ``arguments``, with the skipped ones told to ``reporter``; none at all is an error."""
    paths, skipped = image_files(arguments)
    if not paths:
        reasons = "; ".join(f"{path}: {why}" for path, why in skipped) or "the folders hold no image files"
        raise CaffegenError(f"no readable images to predict on ({reasons})")
    for path, why in skipped:
        reporter.line(f"skipped {path}: {why}")
    return paths


def predict_masks(target, model, arguments, out_dir, batch_size=FORWARD_BATCH, device=None, reporter=None,
                  engine=CAFFE):
    """Write the segmentation ``model``'s mask of each image named by ``arguments`` into ``out_dir``; return the files.

    Each mask is a palette PNG named after its image, coloured with PASCAL VOC's colour map (its
    pixel values are the classes). The folder is built beside its place, so it is never half-written.
    """
    paths = _readable_images(arguments, reporter or SilentReporter())
    stems = [path.stem for path in paths]
    repeated = next((stem for stem in stems if stems.count(stem) > 1), None)
    if repeated:
        raise CaffegenError(f"two images are named '{repeated}': their masks would share {repeated}.png; "
                            "predict on them separately")
    predicted = segment(target, model, paths, batch_size, device, reporter, engine)[0].argmax(axis=1)
    with built_beside(Path(out_dir)) as staging:
        for stem, mask in zip(stems, predicted):
            write_mask_png(staging / f"{stem}.png", mask)
    return [Path(out_dir) / f"{stem}.png" for stem in stems]


def predict(target, model, arguments, top_k=5, batch_size=FORWARD_BATCH, device=None, reporter=None, engine=CAFFE):
    """The Predictions of ``model`` (a TrainedModel) for the images named by ``arguments``, computed by ``engine``."""
    paths = _readable_images(arguments, reporter or SilentReporter())
    probabilities, _ = model_probabilities(target, model, paths, engine, batch_size, device, reporter)
    ranked = (-probabilities).argsort(axis=1, kind="stable")[:, :top_k]
    return [Prediction(path, [(model.classes[j], float(row[j])) for j in order])
            for path, row, order in zip(paths, probabilities, ranked)]
