"""Classifying new images with a trained model and real Caffe, in batches, skipping what is no image."""

from dataclasses import dataclass
from pathlib import Path

from caffegen.errors import CaffegenError
from caffegen.job.dataset import image_problem
from caffegen.run.forward import DEFAULT_BATCH, forward_images


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


def predict(target, model, arguments, top_k=5, batch_size=DEFAULT_BATCH, device=None, echo=None):
    """The Predictions of ``model`` (a TrainedModel) for the images named by ``arguments``."""
    echo = echo or (lambda line: None)
    paths, skipped = image_files(arguments)
    if not paths:
        reasons = "; ".join(f"{path}: {why}" for path, why in skipped) or "the folders hold no image files"
        raise CaffegenError(f"no readable images to classify ({reasons})")
    for path, why in skipped:
        echo(f"skipped {path}: {why}")
    blob = model.output_blob
    probabilities = forward_images(target, model, paths, [blob], batch_size, device, echo)[blob]
    ranked = (-probabilities).argsort(axis=1, kind="stable")[:, :top_k]
    return [Prediction(path, [(model.classes[j], float(row[j])) for j in order])
            for path, row, order in zip(paths, probabilities, ranked)]
