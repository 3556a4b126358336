"""A model bundle: the files another program needs to run a trained model, in one folder or archive.

deploy.prototxt and model.caffemodel are what Caffe, OpenCV DNN and edge toolchains take;
labels.txt names the outputs; preprocessing.json says what to do to an image first (and
mean.binaryproto when the model subtracts a mean image); README.md says how, with Caffe and
with OpenCV; info.json where the model comes from and how it scored.
"""

import json
import os
import shutil
import tarfile
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from caffegen import __version__
from caffegen.errors import WRITE_ERRNOS, CaffegenError, cannot_write
from caffegen.io.files import built_beside, file_sha256
from caffegen.io.quoting import python_string
from caffegen.io.templates import render_template
from caffegen.job.model import BUNDLE_WEIGHTS, DEPLOY, LABELS, PREPROCESSING

MEAN_FILE = "mean.binaryproto"
INFO, README = "info.json", "README.md"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")


def export_bundle(model, target, force=False, metrics=None):
    """Write the bundle of ``model`` (a TrainedModel) to the folder or .tar.gz ``target``; return its path."""
    target = Path(target)
    if target.exists() and not force:
        raise CaffegenError("exists; pass --force to replace it, or choose another name with -o", target)
    if target.name.endswith(ARCHIVE_SUFFIXES):
        return _archive(model, target, metrics)
    with built_beside(target) as staging:
        _fill(staging, model, metrics)
    return target


def _archive(model, target, metrics):
    """The bundle as a .tar.gz whose one folder is named after the archive, written beside it and renamed."""
    name = target.name.removesuffix(".tar.gz").removesuffix(".tgz")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
            _fill(Path(tmp) / name, model, metrics)
            archive = Path(tmp) / target.name
            with tarfile.open(archive, "w:gz") as tar:
                tar.add(Path(tmp) / name, arcname=name)
            os.replace(archive, target)
    except OSError as error:
        if error.errno in WRITE_ERRNOS:
            raise cannot_write(error, target.parent) from None
        raise
    return target


def _fill(folder, model, metrics):
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model.deploy, folder / DEPLOY)
    shutil.copyfile(model.weights, folder / BUNDLE_WEIGHTS)
    (folder / LABELS).write_text("".join(f"{name}\n" for name in model.classes), encoding="utf-8")
    preprocessing = dict(model.preprocessing)
    if model.mean_file:
        shutil.copyfile(model.mean_file, folder / MEAN_FILE)
        preprocessing["mean_file"] = MEAN_FILE
    described = {"preprocessing": preprocessing, "input_shape": list(model.input_shape), "task": model.task}
    (folder / PREPROCESSING).write_text(json.dumps(described, indent=2) + "\n", encoding="utf-8")
    info = {"caffegen": __version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": str(model.source), "classes": len(model.classes),
            "weights_sha256": file_sha256(folder / BUNDLE_WEIGHTS), "metrics": metrics}
    (folder / INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    (folder / README).write_text(render_template("bundle_README.md.j2", preprocessing=preprocessing,
                                                 input_shape=list(model.input_shape), classes=len(model.classes),
                                                 input_blob=python_string(model.input_blob),
                                                 output_blob=python_string(model.output_blob),
                                                 files={"deploy": DEPLOY, "weights": BUNDLE_WEIGHTS,
                                                        "labels": LABELS, "mean": MEAN_FILE}),
                                 encoding="utf-8")
