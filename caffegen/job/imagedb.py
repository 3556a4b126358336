"""The image databases of a job prepared with ``--lmdb``: what to build, and whether a built one still holds it.

Each database (``train_lmdb/``, ``val_lmdb/``) has a record beside it (``train_lmdb.json``) with the
digest of what it was built from: its list, each image's size and modification time, and the
resize, colour and encoding settings. A database whose record matches the plan is reused, not rebuilt.
A ``Data`` layer reads its database in order, so the images go in shuffled once, by the job's seed:
the same images and seed give the same database (``convert_imageset --shuffle`` is not seeded).
"""

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from caffegen.errors import CaffegenError
from caffegen.io.lists import list_line

TRAIN_DB, VAL_DB = "train_lmdb", "val_lmdb"
ENCODE_TYPES = ("png", "jpg")


@dataclass(frozen=True)
class DatabasePlan:
    """One LMDB to build with convert_imageset: its name in the run directory and what goes in."""

    name: str
    list_text: str  # Caffe's list format, absolute paths, in the database's order
    count: int
    resize: tuple  # (height, width), or None: the images' own size
    gray: bool
    encode_type: str  # png or jpg; None stores raw pixels
    digest: str

    @property
    def record_name(self):
        return f"{self.name}.json"

    def record(self, mean_sha256=None):
        """The record written beside the built database; ``mean_sha256``: that of the mean computed from it."""
        return {"digest": self.digest, "images": self.count, "resize": self.resize, "gray": self.gray,
                "encoded": self.encode_type, "mean_sha256": mean_sha256}

    def recorded(self, folder):
        """The record of this database in ``folder`` when it matches this plan and the database is there, else None."""
        folder = Path(folder)
        try:
            record = json.loads((folder / self.record_name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        built = (folder / self.name / "data.mdb").is_file()
        return record if built and isinstance(record, dict) and record.get("digest") == self.digest else None


@dataclass(frozen=True)
class LmdbPlan:
    """The databases of a job, and whether the mean of the training one is computed."""

    databases: tuple
    mean: bool

    @property
    def train(self):
        return self.databases[0]


def plan_databases(dataset, resize, gray, encode_type, mean, seed):
    """The LmdbPlan of ``dataset`` (a Dataset): its images resized to ``resize`` (None: as they are), each
    subset shuffled by ``seed``."""
    if encode_type is not None and encode_type not in ENCODE_TYPES:
        raise CaffegenError(f"--encode-type takes {' or '.join(ENCODE_TYPES)}, got '{encode_type}'")
    resize = tuple(resize) if resize else None
    databases = []
    for name, subset in ((TRAIN_DB, "train"), (VAL_DB, "val")):
        entries = list(getattr(dataset, subset))
        random.Random(seed).shuffle(entries)
        text = "".join(list_line(path, label) for path, label in entries)
        databases.append(DatabasePlan(name, text, len(entries), resize, gray, encode_type,
                                      _digest(text, entries, resize, gray, encode_type)))
    return LmdbPlan(tuple(databases), mean)


def _digest(list_text, entries, resize, gray, encode_type):
    """SHA-256 of a database's list, its images' sizes and modification times, and the conversion settings."""
    digest = hashlib.sha256(json.dumps({"resize": resize, "gray": gray, "encoded": encode_type}).encode())
    digest.update(list_text.encode("utf-8"))
    for path, _ in entries:
        stat = Path(path).stat()
        digest.update(f"{stat.st_size} {stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
