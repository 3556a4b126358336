"""A model bundle: the files another program needs to run a trained model, in one folder or archive.

Each format asked for writes its files (:mod:`caffegen.run.export.formats`); around them,
labels.txt names the outputs, preprocessing.json says what to do to an image first, README.md
says how to run the model, and info.json where it comes from, each file's SHA-256 and how it scored.
"""

import json
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from caffegen import __version__
from caffegen.errors import WRITE_ERRNOS, CaffegenError, cannot_write
from caffegen.io.files import built_beside, file_sha256, temp_folder
from caffegen.io.quoting import python_string
from caffegen.io.templates import render_template
from caffegen.job.model import LABELS, PREPROCESSING
from caffegen.reporting import SilentReporter
from caffegen.run.export.folded import folded_model
from caffegen.run.export.formats import CAFFE_FORMAT, FORMATS

MEAN_FILE = "mean.binaryproto"
INFO, README = "info.json", "README.md"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")


def export_bundle(model, target, force=False, metrics=None, formats=(CAFFE_FORMAT,), caffe=None, reporter=None,
                  fold_bn=False):
    """Write the bundle of ``model`` (a TrainedModel) in ``formats`` to the folder or .tar.gz ``target``; return its
    path. ``caffe`` (a Target) checks a format converted from the Caffe model; with ``fold_bn`` every format
    carries the model with its BatchNorms folded, once ``caffe`` computed the same outputs with it."""
    target, reporter = Path(target), reporter or SilentReporter()
    if target.exists() and not force:
        raise CaffegenError("exists; pass --force to replace it, or choose another name with -o", target)
    with temp_folder() as work:
        model, folded = folded_model(model, caffe, work, reporter) if fold_bn else (model, None)
        writing = _Writing(model, metrics, formats, caffe, reporter, folded)
        if target.name.endswith(ARCHIVE_SUFFIXES):
            return _archive(writing, target)
        with built_beside(target) as staging:
            _fill(staging, writing)
    return target


def _archive(writing, target):
    """The bundle as a .tar.gz whose one folder is named after the archive, written beside it and renamed."""
    name = target.name.removesuffix(".tar.gz").removesuffix(".tgz")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
            _fill(Path(tmp) / name, writing)
            archive = Path(tmp) / target.name
            with tarfile.open(archive, "w:gz") as tar:
                tar.add(Path(tmp) / name, arcname=name)
            os.replace(archive, target)
    except OSError as error:
        if error.errno in WRITE_ERRNOS:
            raise cannot_write(error, target.parent) from None
        raise
    return target


@dataclass(frozen=True)
class _Writing:
    """What a bundle is written from: the model, its metrics, the formats, the Caffe that checks, the reporter and
    the BatchNorms folded (None: folding was not asked for)."""

    model: object
    metrics: dict
    formats: tuple
    caffe: object
    reporter: object
    folded: tuple = None


def _fill(folder, writing):
    model, formats = writing.model, writing.formats
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in formats:
        files.update(FORMATS[name].write(model, folder, writing.caffe, writing.reporter))
    (folder / LABELS).write_text("".join(f"{name}\n" for name in model.classes), encoding="utf-8")
    preprocessing = dict(model.preprocessing)
    if model.mean_file:  # preprocessing, whatever the format
        shutil.copyfile(model.mean_file, folder / MEAN_FILE)
        files["mean"] = preprocessing["mean_file"] = MEAN_FILE
    described = {"preprocessing": preprocessing, "input_shape": list(model.input_shape), "task": model.task}
    (folder / PREPROCESSING).write_text(json.dumps(described, indent=2) + "\n", encoding="utf-8")
    (folder / INFO).write_text(json.dumps(_info(folder, writing, files), indent=2) + "\n", encoding="utf-8")
    (folder / README).write_text(render_template("bundle_README.md.j2", preprocessing=preprocessing,
                                                 input_shape=list(model.input_shape), classes=len(model.classes),
                                                 input_blob=python_string(model.input_blob),
                                                 output_blob=python_string(model.output_blob), formats=formats,
                                                 files=dict(files, labels=LABELS)),
                                 encoding="utf-8")


def _info(folder, writing, files):
    """info.json: who made the bundle and when, from what, in which formats, each file's SHA-256, the metrics, and
    the BatchNorms folded when folding was asked for."""
    model = writing.model
    info = {"caffegen": __version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": str(model.source), "classes": len(model.classes), "formats": list(writing.formats),
            "sha256": {name: file_sha256(folder / name) for name in files.values()}, "metrics": writing.metrics}
    if writing.folded is not None:
        info["folded_batchnorm"] = list(writing.folded)
    if "weights" in files:
        info["weights_sha256"] = info["sha256"][files["weights"]]
    return info
