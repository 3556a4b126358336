"""Image data for a fine-tuning job: class folders or Caffe lists, checked, split and written.

Lists are Caffe's (:mod:`caffegen.io.lists`); labels must be 0…K-1.
"""

import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from caffegen.errors import LINE_BREAKS, CaffegenError
from caffegen.io.lists import check_one_line, list_line, read_list

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".pbm", ".tif", ".tiff"}
MAX_LISTED = 5


@dataclass
class Labelled:
    """Data with named classes, whose label is their position."""

    classes: list

    def labels_text(self):
        """labels.txt: one class name per line, in label order."""
        return "".join(f"{name}\n" for name in self.classes)


@dataclass
class Dataset(Labelled):
    """Labelled images (absolute paths) split into training and validation sets."""

    train: list
    val: list

    def list_text(self, subset, names=None):
        """Caffe's list format for ``subset`` ("train" or "val"), with paths renamed by ``names`` if given."""
        names = names or {}
        return "".join(list_line(names.get(path, path), label) for path, label in getattr(self, subset))

    def copy_names(self, folder="data"):
        """{image path: relative path under ``folder``} for copying the images into a run directory."""
        names = {}
        for path, label in self.train + self.val:
            names[path] = f"{folder}/{self.classes[label]}/{len(names):06d}{path.suffix.lower()}"
        return names

    @property
    def train_count(self):
        return len(self.train)

    @property
    def val_count(self):
        return len(self.val)


@dataclass
class KeptData(Labelled):
    """The base net's own data layers (LMDB, HDF5, …), described by the counts the user gives."""

    train_count: int
    val_count: int


def scan_class_folders(data_dir, val_fraction=0.2, seed=1, skip_bad=False, warn=None):
    """A dataset from ``data_dir/<class>/<image>``: labels in sorted class order, stratified split."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise CaffegenError("no such directory (expected one sub-folder of images per class)", data_dir)
    if not 0 < val_fraction < 1:
        raise CaffegenError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    folders = sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(folders) < 2:
        raise CaffegenError(f"found {len(folders)} class folder(s); fine-tuning a classifier needs at least 2 "
                            "(one sub-folder of images per class)", data_dir)
    images, bad = {}, []
    for folder in folders:
        check_one_line(folder.name, "the class folder", folder)
        images[folder.name], problems = _images_in(folder)
        bad += problems
    if bad:
        _report_bad_files(bad, data_dir, skip_bad, warn)
    empty = [name for name, found in images.items() if not found]
    if empty:
        raise CaffegenError(f"class folder(s) without images: {', '.join(empty)}", data_dir)
    small = [name for name, found in images.items() if len(found) < 2]
    if small:
        raise CaffegenError(f"class(es) with a single image cannot be split into training and validation: "
                            f"{', '.join(small)}", data_dir)
    return _split(images, val_fraction, seed)


def read_lists(train_list, val_list):
    """A dataset from existing Caffe lists: files must exist, labels must be 0…K-1 without gaps."""
    train = _read_list(Path(train_list))
    val = _read_list(Path(val_list))
    untrained = sorted({label for _, label in val} - {label for _, label in train})
    if untrained:
        raise CaffegenError(f"class {untrained[0]} is in the validation list but not in the training list "
                            f"{train_list}: the classifier would never learn it; give it training images, or leave "
                            "it out of both lists", val_list)
    labels = {label for _, label in train + val}
    count = max(labels) + 1
    missing = sorted(set(range(count)) - labels)
    if missing:
        raise CaffegenError(f"labels must be 0…{count - 1} without gaps; missing: "
                            f"{', '.join(map(str, missing[:MAX_LISTED]))}", train_list)
    return Dataset([str(label) for label in range(count)], train, val)


def _images_in(folder):
    """(image paths, [(path, problem)]) for the files of one class folder."""
    found, problems = [], []
    for path in sorted(folder.rglob("*")):
        if path.is_dir() or any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        problem = image_problem(path)
        if problem:
            problems.append((path, problem))
        else:
            found.append(path.resolve())
    return found, problems


def image_problem(path):
    """Why ``path`` is not an image Caffe can read, or None."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return "not an image file (by its extension)"
    breaks = sorted({f"U+{ord(char):04X}" for char in str(path) if char in LINE_BREAKS})
    if breaks:
        return f"a line break ({', '.join(breaks)}) in its path, which a line of Caffe's lists cannot carry"
    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as error:
        return f"unreadable image ({error.__class__.__name__})"
    return None


def _report_bad_files(bad, data_dir, skip_bad, warn):
    listed = "; ".join(f"{path.relative_to(data_dir)}: {problem}" for path, problem in bad[:MAX_LISTED])
    more = f" and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
    if not skip_bad:
        raise CaffegenError(f"{len(bad)} file(s) are not usable images: {listed}{more} "
                            "(remove them, or pass --skip-bad to leave them out)", data_dir)
    if warn:
        warn(f"left out {len(bad)} file(s) that are not usable images: {listed}{more}")


def _split(images, val_fraction, seed):
    rng = random.Random(seed)
    classes = sorted(images)
    train, val = [], []
    for label, name in enumerate(classes):
        paths = list(images[name])
        rng.shuffle(paths)
        n_val = min(len(paths) - 1, max(1, round(len(paths) * val_fraction)))
        val += [(path, label) for path in paths[:n_val]]
        train += [(path, label) for path in paths[n_val:]]
    rng.shuffle(train)
    rng.shuffle(val)
    return Dataset(classes, train, val)


def _read_list(path):
    entries = []
    for line in read_list(path):
        if not line.path or line.label_number is None or line.label_number < 0:
            raise CaffegenError(f"expected 'path label' with a label 0, 1, …, got '{line.text().strip()}'",
                                path, line.number)
        image_path = Path(line.path)
        if not image_path.is_absolute():
            image_path = (path.parent / image_path)
        if not image_path.is_file():
            raise CaffegenError(f"image not found: {image_path}", path, line.number)
        entries.append((image_path.resolve(), line.label_number))
    if not entries:
        raise CaffegenError("empty list", path)
    return entries


def labelled_images(classes, data_dir=None, list_file=None, base=None, skip_bad=False, warn=None):
    """[(image path, label)] to evaluate a model of ``classes`` on: class folders, a Caffe list, or ``base``'s val.txt.

    Folders are named after classes of labels.txt; list labels are positions in it. Relative list
    paths are read from the current folder, else from the list's own (``base`` for val.txt).
    """
    if data_dir is not None:
        return _class_folder_images(Path(data_dir), classes, skip_bad, warn)
    path = Path(list_file) if list_file is not None else Path(base) / "val.txt"
    entries = []
    for line in read_list(path):
        label = line.label_number
        if label is None or not 0 <= label < len(classes):
            raise CaffegenError(f"label '{line.label}' is unknown to the model's labels.txt, which has "
                                f"{len(classes)} classes (0…{len(classes) - 1})", path, line.number)
        image = next((candidate for candidate in (Path(line.path), path.parent / line.path) if candidate.is_file()),
                     None)
        if image is None:
            raise CaffegenError(f"image not found: {line.path}", path, line.number)
        entries.append((image.resolve(), label))
    if not entries:
        raise CaffegenError("empty list: no images to evaluate", path)
    return entries


def _class_folder_images(data_dir, classes, skip_bad, warn):
    if not data_dir.is_dir():
        raise CaffegenError("no such directory (expected one sub-folder of images per class)", data_dir)
    folders = sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [folder.name for folder in folders if folder.name not in classes]
    if unknown:
        raise CaffegenError(f"class folder(s) unknown to the model's labels.txt: {', '.join(unknown[:MAX_LISTED])} "
                            f"(its classes: {', '.join(classes[:10])}{' …' if len(classes) > 10 else ''})", data_dir)
    entries, bad = [], []
    for folder in folders:
        found, problems = _images_in(folder)
        entries += [(path, classes.index(folder.name)) for path in found]
        bad += problems
    if bad:
        _report_bad_files(bad, data_dir, skip_bad, warn)
    if not entries:
        raise CaffegenError("no images found (expected one sub-folder of images per class)", data_dir)
    return entries
