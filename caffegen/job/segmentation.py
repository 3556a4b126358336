"""A segmentation job: images and label masks paired, checked and split, and the net and solver fit for them.

``DIR/images/`` and ``DIR/masks/`` hold files of the same stems; a mask's pixel value is the
class, 255 a pixel to ignore. The pairs are written to HDF5 (:mod:`caffegen.io.segdata`, which
says why HDF5) that ``HDF5Data`` layers read; ``segmentation.json`` lists the pairs, so evaluation
reads the image files and masks themselves.

The solver follows FCN's practice: one image per batch, a fixed learning rate and, since the
loss sums over pixels (``normalize: false``), momentum 0.99 and a learning rate scaled down by
the pixels of an image. Freezing works as for classifiers; cached features do not apply, since
the head's skips (Crop, Eltwise) read spatial features from several depths of the trunk.
"""

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caffegen.defaults import FINE_TUNE_LR, IGNORE_LABEL
from caffegen.errors import CaffegenError
from caffegen.io.prototxt import read_net, to_text
from caffegen.io.segdata import read_image_size, read_mask, write_pairs_h5
from caffegen.job.dataset import IMAGE_SUFFIXES, Labelled
from caffegen.job.options import SEGMENTATION
from caffegen.job.rundir import SNAPSHOT_DIR
from caffegen.job.scripts import wrapper_scripts
from caffegen.job.solver import (
    check_snapshot_prefix,
    check_solver_text,
    epoch_schedule,
    exact_validation,
    parse_overrides,
    render_solver,
    solver_fields,
)
from caffegen.net.freeze import freeze
from caffegen.net.head import retarget_head
from caffegen.net.inspect import preflight
from caffegen.net.lr_rules import apply_lr_rules
from caffegen.net.segmentation import SOURCES, segmentation_data_layers, stated_mean, wire_segmentation
from caffegen.net.shapes import check_runs
from caffegen.net.wiring import deploy_net

PAIRS = "segmentation.json"
SUBSETS = ("train", "val")
# Caffe's HDF5Data holds one whole file in memory at a time: the pairs are split into files of about this size.
H5_FILE_BYTES = 256 << 20


@dataclass
class SegmentationData(Labelled):
    """Pairs of (image, mask) absolute paths split into training and validation sets, all of one size."""

    train: list
    val: list
    size: tuple  # (height, width)

    @property
    def train_count(self):
        return len(self.train)

    @property
    def val_count(self):
        return len(self.val)

    def pairs_text(self):
        """segmentation.json: the pairs of each subset, the image size and the ignore label."""
        described = {subset: [[str(image), str(mask)] for image, mask in getattr(self, subset)]
                     for subset in SUBSETS}
        described.update(size=list(self.size), ignore_label=IGNORE_LABEL)
        return json.dumps(described, indent=2) + "\n"

    def h5_files(self, subset):
        """{HDF5 file name: its pairs} of ``subset``, each file under H5_FILE_BYTES (3 image channels and a mask)."""
        per_file = max(1, H5_FILE_BYTES // (4 * 4 * self.size[0] * self.size[1]))
        pairs = getattr(self, subset)
        return {f"{subset}_{start // per_file:03d}.h5": pairs[start:start + per_file]
                for start in range(0, len(pairs), per_file)}

    def source_texts(self):
        """{HDF5Data source list: its text}: each list names its subset's HDF5 files."""
        return {SOURCES[subset]: "".join(f"{name}\n" for name in self.h5_files(subset)) for subset in SUBSETS}

    def writer(self, mean_value, scale):
        """A function that writes the HDF5 files into a run directory being built."""
        def write(folder):
            for subset in SUBSETS:
                for name, pairs in self.h5_files(subset).items():
                    write_pairs_h5(Path(folder) / name, pairs, mean_value, scale)
        return write


def scan_segmentation(data_dir, val_fraction=0.2, seed=1, num_classes=None):
    """The SegmentationData of ``data_dir`` (images/ and masks/), split by ``seed``; every mask checked."""
    data_dir = Path(data_dir)
    pairs = pair_images(data_dir)
    size = _common_size(pairs, data_dir)
    found = max(_largest_class(checked_mask(mask, size, num_classes)) for _, mask in pairs)
    count = num_classes or found + 1
    if count < 2:
        raise CaffegenError("the masks hold one class only; a segmentation needs at least two", data_dir / "masks")
    rng = random.Random(seed)
    rng.shuffle(pairs)
    n_val = min(len(pairs) - 1, max(1, round(len(pairs) * val_fraction)))
    return SegmentationData([str(label) for label in range(count)], pairs[n_val:], pairs[:n_val], size)


def pair_images(data_dir):
    """[(image, mask)] of ``data_dir``: each image of images/ with the mask of its stem in masks/."""
    images_dir, masks_dir = Path(data_dir) / "images", Path(data_dir) / "masks"
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise CaffegenError("segmentation data is a folder with images/ and masks/ (label PNGs of the same "
                                "names); this folder is missing", folder)
    masks = {path.stem: path.resolve() for path in sorted(masks_dir.iterdir()) if path.suffix.lower() == ".png"}
    images = [path.resolve() for path in sorted(images_dir.iterdir()) if path.suffix.lower() in IMAGE_SUFFIXES]
    if len(images) < 2:
        raise CaffegenError("need at least two images (one to train on, one to validate)", images_dir)
    missing = [path for path in images if path.stem not in masks]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise CaffegenError(f"no mask for image '{missing[0].name}'{more}: expected {masks_dir / missing[0].stem}.png",
                            images_dir)
    return [(path, masks[path.stem]) for path in images]


def _common_size(pairs, data_dir):
    """The (height, width) every image has; images of another size are refused."""
    size = read_image_size(pairs[0][0])
    for image, _ in pairs:
        if read_image_size(image) != size:
            raise CaffegenError(f"is {'×'.join(map(str, read_image_size(image)))}, but the first image is "
                                f"{size[0]}×{size[1]}: resize the images (and masks) to one size", image)
    return size


def checked_mask(path, size, num_classes=None, hint="--num-classes sets the classes"):
    """The mask at ``path`` as (H, W) classes, refused unless it is ``size`` and its values are classes or 255."""
    mask = read_mask(path)
    if mask.shape != tuple(size):
        raise CaffegenError(f"the mask is {mask.shape[0]}×{mask.shape[1]} but the images are {size[0]}×{size[1]}",
                            path)
    values = np.unique(mask[mask != IGNORE_LABEL])
    limit = num_classes if num_classes else IGNORE_LABEL
    bad = values[(values < 0) | (values >= limit)]
    if len(bad):
        raise CaffegenError(f"pixel value {int(bad[0])} is no class: values must be 0…{limit - 1}, or "
                            f"{IGNORE_LABEL} to ignore ({hint})", path)
    return mask


def _largest_class(mask):
    scored = mask[mask != IGNORE_LABEL]
    return int(scored.max()) if scored.size else 0


@dataclass
class SegmentationBuild:
    """The files, manifest entries and notes of a segmentation run, and the writer of its HDF5 files."""

    files: dict
    manifest: dict
    notes: list
    write_data: object
    dataset: SegmentationData
    schedule: object


def build_segmentation(options, weights, caffe="caffe", force=False):
    """Everything of a segmentation run for ``options`` (JobOptions with task segmentation) but its common manifest."""
    check_segmentation_options(options)
    dataset = scan_segmentation(options.data, options.val_fraction, options.seed, options.num_classes)
    loaded = read_net(options.net)
    net, notes = loaded.net, []
    if loaded.upgraded_from:
        notes.append(f"upgraded the legacy {loaded.upgraded_from} net to the current layer format")
    processing = _preprocessing(net, options.data_settings.mean_value, options.net)
    input_shape = [1, 3, *dataset.size]
    settings = options.data_settings
    val_batch, batch_notes = exact_validation(dataset.val_count, settings.val_batch_size or 1)
    notes += batch_notes
    score = wire_segmentation(net, settings.batch_size, val_batch, input_shape, options.net)
    if options.freeze_upto or options.freeze_from:
        notes += freeze(net, options.freeze_upto, options.freeze_from, options.net).summary()
    notes += retarget_head(net, len(dataset.classes), None, options.head_name, options.head_lr_mult,
                           options.net).summary()
    if options.lr_rules:
        notes += apply_lr_rules(net, options.lr_rules).summary()
    deploy = deploy_net(net, *input_shape[1:])
    check_runs(net, input_shape, options.net)
    notes += preflight(net, weights, input_shape, allow_unrelated=force)
    schedule, solver_text, base_lr = _solver(options, net, dataset, val_batch)
    files = {"train_val.prototxt": to_text(net), "deploy.prototxt": to_text(deploy), "solver.prototxt": solver_text,
             "labels.txt": dataset.labels_text(), PAIRS: dataset.pairs_text(), **dataset.source_texts(),
             **wrapper_scripts(caffe, weights, options.device.gpu_flag, len(dataset.classes), notes)}
    manifest = {"task": SEGMENTATION, "base_lr": base_lr, "input_shape": tuple(input_shape),
                "preprocessing": processing, "segmentation": {"score_blob": score, "ignore_label": IGNORE_LABEL}}
    writer = dataset.writer(processing["mean_value"], processing["scale"])
    return SegmentationBuild(files, manifest, notes, writer, dataset, schedule)


def _preprocessing(net, mean_value, path):
    """The preprocessing of the HDF5 images, as the manifest records it: the base net's data layer's mean and scale."""
    layers = segmentation_data_layers(net)
    layer = layers[0] if layers else None
    if layer is not None and layer.transform_param.mean_file and not mean_value:
        raise CaffegenError(f"data layer '{layer.name}' subtracts a mean file; --task segmentation stores "
                            "preprocessed images: pass --mean-value B,G,R", path)
    return {"layer_type": "HDF5Data", "channel_order": "BGR", "resize": None, "crop_size": None,
            "mean_value": list(mean_value or (stated_mean(layer) if layer is not None else ())),
            "mean_file": None, "scale": layer.transform_param.scale if layer is not None else 1.0}


def _solver(options, net, dataset, val_batch):
    """(schedule, solver text, base_lr): FCN's fixed rate, with momentum 0.99 for one image per batch."""
    batch = options.data_settings.batch_size or 1
    schedule = epoch_schedule(dataset.train_count, dataset.val_count, batch, val_batch, options.epochs,
                              options.iter_size, options.device.workers, options.snapshot_every)
    base_lr = options.base_lr if options.base_lr is not None else segmentation_lr(dataset.size, batch)
    chosen = {"lr_policy": "fixed", "momentum": 0.99 if batch == 1 else 0.9}
    fields = [(key, chosen.get(key, value), note if key not in chosen else "FCN's practice")
              for key, value, note in solver_fields(schedule, base_lr, not options.device.is_cpu, options.seed,
                                                    options.iter_size, snapshot_prefix=f"{SNAPSHOT_DIR}/ft")
              if key not in ("gamma", "stepsize")]
    text = render_solver(fields, schedule, parse_overrides(options.solver_set))
    solver = check_solver_text(text)
    check_snapshot_prefix(solver)
    return schedule, text, float(f"{solver.base_lr:.7g}")


def segmentation_lr(size, batch=1):
    """The default learning rate of a loss summed over the pixels of ``batch`` images of ``size`` (H, W)."""
    return FINE_TUNE_LR / (size[0] * size[1] * batch)


def check_segmentation_options(options):
    """Refuse the options that a segmentation job cannot take, each with its reason."""
    if options.cache_features:
        raise CaffegenError("--cache-features does not apply to --task segmentation: the head's skips (Crop, "
                            "Eltwise) read spatial features from several depths of the trunk; use --freeze-upto")
    if options.keep_data_layers or options.train_list or options.val_list or options.copy_data:
        raise CaffegenError("--task segmentation reads --data DIR (images/ and masks/); drop --keep-data-layers, "
                            "--train-list/--val-list and --copy-data")
    if not options.data:
        raise CaffegenError("--task segmentation needs --data DIR with images/ and masks/")


def read_pairs(path):
    """[(image, mask)] of the validation subset recorded in the segmentation.json of the run directory ``path``."""
    path = Path(path)
    try:
        recorded = json.loads((path / PAIRS).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CaffegenError(f"cannot read the run's image and mask pairs ({error.__class__.__name__})",
                            path / PAIRS) from None
    return [(Path(image), Path(mask)) for image, mask in recorded["val"]]
