"""The first item of a data layer's source, read as Caffe reads it: what the net alone cannot say of its input.

``HDF5Data`` reads the datasets named after its tops from the files its source lists; ``Data`` reads
``Datum`` records from an LMDB (a LevelDB cannot be read here); ``ImageData`` reads the images its
list names. Paths are tried as Caffe would open them from the current folder, then from the net's.
The libraries of each format are imported by its reader.
"""

import io
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError

from caffegen.errors import CaffegenError
from caffegen.io.lists import read_list
from caffegen.io.schema import BVLC

LMDB = 1  # DataParameter.DB


@dataclass(frozen=True)
class FirstInput:
    """One item's shape without the batch axis (None when it cannot be read), and where it came from or why not."""

    shape: tuple
    origin: str


def first_input(layer, net_dir):
    """The FirstInput of data layer ``layer`` (a ``LayerParameter``), or None for a type that reads no files."""
    reader = READERS.get(layer.type)
    if reader is None:
        return None
    try:
        return reader(layer, Path(net_dir))
    except (OSError, ValueError, DecodeError, CaffegenError) as error:
        return FirstInput(None, f"its data cannot be read ({error})")


def _found(name, net_dir):
    """The file or folder ``name`` as Caffe would open it from here, else beside the net; None if neither exists."""
    return next((path for path in (Path(name), net_dir / name) if name and path.exists()), None)


def _hdf5(layer, net_dir):
    source = layer.hdf5_data_param.source
    listed = _found(source, net_dir)
    if listed is None:
        return FirstInput(None, f"its source list {source} is not here")
    files = [line.strip() for line in listed.read_text(encoding="utf-8").splitlines() if line.strip()]
    first = _found(files[0], net_dir) if files else None
    if first is None:
        return FirstInput(None, f"the first file of {listed} is not here" if files else f"{listed} lists no file")
    import h5py
    with h5py.File(first, "r") as stored:
        if layer.top[0] not in stored:
            return FirstInput(None, f"{first} has no dataset '{layer.top[0]}'")
        return FirstInput(tuple(stored[layer.top[0]].shape[1:]), f"the dataset '{layer.top[0]}' of {first}")


def _datum(layer, net_dir):
    param = layer.data_param
    if param.backend != LMDB:
        return FirstInput(None, f"{param.source} is a LevelDB, which caffegen cannot read")
    found = _found(param.source, net_dir)
    if found is None:
        return FirstInput(None, f"the LMDB {param.source} is not here")
    import lmdb
    try:
        datum = first_datum(found)
    except lmdb.Error as error:
        raise CaffegenError(f"not a readable LMDB: {error}", found) from None
    if datum is None:
        return FirstInput(None, f"the LMDB {found} is empty")
    where = f"the first Datum of {found}"
    if not datum.encoded:
        return FirstInput((datum.channels, datum.height, datum.width), where)
    transform = layer.transform_param
    gray = True if transform.force_gray else False if transform.force_color else None
    return FirstInput(_image_shape(io.BytesIO(datum.data), gray), f"{where} (an encoded image)")


def first_datum(path):
    """The first ``Datum`` of the LMDB ``path`` (a folder or a file), or None when it is empty."""
    import lmdb
    with lmdb.open(str(path), readonly=True, lock=False, readahead=False, subdir=Path(path).is_dir()) as env:
        with env.begin() as transaction:
            record = next(iter(transaction.cursor()), None)
    return None if record is None else BVLC.Datum.FromString(record[1])


def record_count(path):
    """How many records the LMDB folder ``path`` holds."""
    import lmdb
    with lmdb.open(str(path), readonly=True, lock=False, readahead=False) as env:
        return env.stat()["entries"]


def _image(layer, net_dir):
    param = layer.image_data_param
    listed = _found(param.source, net_dir)
    if listed is None:
        return FirstInput(None, f"its list {param.source} is not here")
    lines = read_list(listed)
    image = _found(param.root_folder + lines[0].path, net_dir) if lines else None
    if image is None:
        return FirstInput(None, f"the first image of {listed} is not here" if lines else f"{listed} is empty")
    return FirstInput(_image_shape(image, not param.is_color), f"the first image of {listed}, {image}")


def _image_shape(source, gray):
    """(channels, height, width) of an image as Caffe decodes it: gray, colour, or (None) as stored."""
    from PIL import Image
    with Image.open(source) as image:
        channels = len(image.getbands()) if gray is None else 1 if gray else 3
        return (channels, image.height, image.width)


READERS = {"HDF5Data": _hdf5, "Data": _datum, "ImageData": _image}
