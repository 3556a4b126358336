"""The databases Caffe's ``extract_features`` writes (one float ``Datum`` per image, keyed by its index),
and the float32 HDF5 files caffegen keeps features in.

``extract_features`` runs whole mini-batches, so it stores a few records past the last image (the
data layer wraps around to the start); keys are zero-padded indices, so they sort in order.
"""

import math
import os
from pathlib import Path

import h5py
import lmdb
import numpy as np

from caffegen.errors import CaffegenError
from caffegen.io.files import temp_file_beside
from caffegen.io.schema import BVLC

SLICE = 256  # records converted at a time: memory stays bounded whatever the number of images
CHUNK_ROWS = 64  # images per HDF5 chunk: HDF5Data reads whole chunks


def feature_slices(path, count, size=SLICE):
    """The first ``count`` records of the feature LMDB ``path``, as float32 arrays of up to ``size`` rows."""
    try:
        with lmdb.open(str(path), readonly=True, lock=False, readahead=False) as env, env.begin() as transaction:
            values, rows = transaction.cursor().iternext(keys=False), []
            for _, value in zip(range(count), values):
                rows.append(np.asarray(BVLC.Datum.FromString(value).float_data, dtype=np.float32))
                if len(rows) == size:
                    yield np.stack(rows)
                    rows = []
            if rows:
                yield np.stack(rows)
    except lmdb.Error as error:
        raise CaffegenError(f"cannot read the features Caffe wrote: {error}", path) from None


def read_feature_db(path, count):
    """The first ``count`` records of the feature LMDB ``path`` as one float32 array (count, values per image)."""
    parts = list(feature_slices(path, count))
    found = sum(len(part) for part in parts)
    if found < count:
        raise CaffegenError(f"Caffe wrote {found} feature records, {count} were expected", path)
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def _chunk_rows(count, most=CHUNK_ROWS):
    """Rows per HDF5 chunk: at most ``most``, equal chunks, so the last one wastes at most a few rows."""
    return math.ceil(count / math.ceil(count / most))


def write_features_h5(path, sources, count, shapes, attributes=None):
    """Write the HDF5 file ``path`` atomically: dataset name → the first ``count`` rows of ``sources[name]``.

    A source is an iterable of float32 arrays of rows (``feature_slices`` of a Caffe LMDB, ``stored_slices``
    of other HDF5 files, or mini-batches computed on the way); ``shapes`` gives each dataset's shape per
    image. Datasets are float32 and chunked, and the rows are copied a slice at a time. ``attributes``
    (name → text) are stored on the file.
    """
    path = Path(path)
    fd, tmp = temp_file_beside(path)
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as out:
            out.attrs.update(attributes or {})
            for name, source in sources.items():
                shape = tuple(shapes[name])
                dataset = out.create_dataset(name, (count, *shape), dtype="float32",
                                             chunks=(_chunk_rows(count), *shape) if count else None)
                written = 0
                for part in source:
                    part = part[:count - written]
                    dataset[written:written + len(part)] = part.reshape(len(part), *shape)
                    written += len(part)
                if written < count:
                    raise CaffegenError(f"{written} rows of '{name}' were computed, {count} were expected", path)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def stored_slices(path, name, size=SLICE):
    """The rows of dataset ``name`` of the HDF5 file ``path``, as float32 arrays of up to ``size`` rows."""
    with h5py.File(path, "r") as stored:
        dataset = stored[name]
        for start in range(0, len(dataset), size):
            yield dataset[start:start + size]


def stored_attribute(path, name):
    """The text attribute ``name`` of the HDF5 file ``path``, or None."""
    with h5py.File(path, "r") as stored:
        value = stored.attrs.get(name)
    return None if value is None else str(value)
