"""Epoch-based fine-tuning solvers, rendered from a jinja2 template and checked by protobuf.

The rendered text is parsed back into ``SolverParameter`` before anything is written, so a
template or an override can never produce a solver Caffe rejects as malformed.
"""

import math
import os
from dataclasses import dataclass
from difflib import get_close_matches
from pathlib import Path

from caffegen.defaults import FINE_TUNE_LR
from caffegen.errors import CaffegenError, did_you_mean
from caffegen.io.prototxt import parse_text
from caffegen.io.schema import BVLC
from caffegen.io.templates import render_template

STEP_FRACTION = 0.4


@dataclass(frozen=True)
class Schedule:
    """Iterations derived from image counts, batch sizes and epochs."""

    train_images: int
    val_images: int
    images_per_iter: int
    iters_per_epoch: int
    epochs: int
    test_iter: int
    snapshot_every: int

    @property
    def max_iter(self):
        return self.epochs * self.iters_per_epoch

    @property
    def snapshot(self):
        return self.snapshot_every * self.iters_per_epoch


def exact_batch(images, requested):
    """The largest batch of at most ``requested`` images that divides ``images``: test_iter of them scores every
    validation image once (Caffe wraps its TEST data around, counting the first images again otherwise)."""
    return max(size for size in range(1, min(requested, images) + 1) if images % size == 0)


def exact_validation(images, requested):
    """(the exact batch for ``images`` validation images at most ``requested``, the notes that say so)."""
    batch = exact_batch(images, requested)
    note = exact_batch_note(images, requested, batch)
    return batch, [note] if note else []


def exact_batch_note(images, requested, batch):
    """Why the validation batch is not the one asked for, or None when it is."""
    if batch == requested:
        return None
    iterations = images // batch
    return (f"validation batch {batch} instead of {requested}: {iterations} iteration{'s' * (iterations > 1)} of "
            f"{batch} image{'s' * (batch > 1)} score each of the {images} validation images once")


def epoch_schedule(train_images, val_images, batch_size, val_batch_size, epochs,
                   iter_size=1, n_gpus=1, snapshot_every=1):
    """The schedule of ``epochs`` epochs: every GPU takes ``batch_size`` images ``iter_size`` times per iteration."""
    if train_images < 1 or val_images < 1:
        raise CaffegenError("need at least one training and one validation image")
    for name, value in (("batch size", batch_size), ("validation batch size", val_batch_size),
                        ("epochs", epochs), ("iter_size", iter_size), ("number of GPUs", n_gpus),
                        ("snapshot interval", snapshot_every)):
        if value < 1:
            raise CaffegenError(f"the {name} must be at least 1, got {value}")
    if val_images % val_batch_size:
        raise CaffegenError(f"a validation batch of {val_batch_size} does not divide the {val_images} validation "
                            f"images: Caffe would count some twice; use {exact_batch(val_images, val_batch_size)}")
    images_per_iter = batch_size * iter_size * n_gpus
    return Schedule(train_images, val_images, images_per_iter, math.ceil(train_images / images_per_iter),
                    epochs, val_images // val_batch_size, snapshot_every)


def solver_fields(schedule, base_lr=FINE_TUNE_LR, gpu=False, seed=1, iter_size=1,
                  net="train_val.prototxt", snapshot_prefix="snapshots/ft"):
    """The solver's fields as (name, value, note) in the order they are written."""
    display = max(1, min(20, schedule.iters_per_epoch // 4))
    return [
        ("net", net, None),
        ("test_iter", schedule.test_iter, f"{schedule.val_images} validation images"),
        ("test_interval", schedule.iters_per_epoch, "once per epoch"),
        ("base_lr", base_lr, None),
        ("lr_policy", "step", None),
        ("gamma", 0.1, None),
        ("stepsize", max(1, round(schedule.max_iter * STEP_FRACTION)), None),
        ("momentum", 0.9, None),
        ("weight_decay", 0.0005, None),
        ("iter_size", iter_size, None),
        ("max_iter", schedule.max_iter, f"{schedule.epochs} epochs"),
        ("display", display, None),
        ("average_loss", display, None),
        ("snapshot", schedule.snapshot, f"every {schedule.snapshot_every} epoch(s)"),
        ("snapshot_prefix", snapshot_prefix, None),
        ("solver_mode", "GPU" if gpu else "CPU", None),
        ("random_seed", seed, None),
        ("type", "SGD", None),
    ]


def parse_overrides(settings):
    """``key=value`` strings (from --solver-set) as [(key, prototxt literal)], each checked by protobuf.

    A repeated field (``stepvalue``, ``test_iter``) may be given several times.
    """
    overrides = []
    for setting in settings:
        key, sep, value = setting.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise CaffegenError(f"--solver-set expects key=value, got '{setting}'")
        field = _check_field(key)
        if not field.is_repeated and any(existing == key for existing, _ in overrides):
            raise CaffegenError(f"--solver-set {key} given twice")
        literal = _literal(key, value)
        try:
            parse_text(f"{key}: {literal}", BVLC.SolverParameter(), "--solver-set")
        except CaffegenError as error:
            raise CaffegenError(f"--solver-set {key}={value}: {error.message}") from None
        overrides.append((key, literal))
    return overrides


def render_solver(fields, schedule, overrides=()):
    """The solver text: ``fields`` with ``overrides`` (from :func:`parse_overrides`) in their place."""
    overridden = {key for key, _ in overrides}
    rows = []
    for key, value, note in fields:
        if key in overridden:
            rows += [(key, literal, "set by --solver-set") for k, literal in overrides if k == key]
            overridden.discard(key)
        else:
            rows.append((key, _literal(key, value), note))
    rows += [(key, literal, "set by --solver-set") for key, literal in overrides if key in overridden]
    text = render_template("solver.prototxt.j2", fields=rows, schedule=schedule)
    check_solver_text(text)
    return text


def check_solver_text(text, path="solver.prototxt"):
    """Parse solver text into ``SolverParameter``; a problem becomes a one-line error."""
    try:
        return parse_text(text, BVLC.SolverParameter(), path)
    except CaffegenError as error:
        raise CaffegenError(f"invalid solver: {error.message}", path, error.line, error.column) from None


def check_snapshot_prefix(solver):
    """Refuse a snapshot_prefix outside the run directory: launch, --resume and evaluate look for snapshots there."""
    prefix = Path(solver.snapshot_prefix)
    if prefix.is_absolute() or os.path.normpath(prefix).startswith(".."):
        raise CaffegenError(f"--solver-set: snapshot_prefix '{solver.snapshot_prefix}' leaves the run directory; "
                            "keep the snapshots inside it (a folder of it may be a link to scratch space)")


def _check_field(key):
    fields = BVLC.SolverParameter.DESCRIPTOR.fields_by_name
    if key not in fields:
        hint = did_you_mean(get_close_matches(key, list(fields), n=3))
        raise CaffegenError(f"--solver-set: SolverParameter has no field '{key}'{hint}")
    return fields[key]


def _literal(key, value):
    """``value`` written as prototxt for field ``key``: strings quoted, enums and numbers bare."""
    field = BVLC.SolverParameter.DESCRIPTOR.fields_by_name[key]
    text = str(value)
    if field.type == field.TYPE_STRING:
        if text.startswith('"') and text.endswith('"') and len(text) >= 2:
            return text
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if field.type == field.TYPE_BOOL:
        return text.lower()
    return text

