"""Mean files: the mean image Caffe subtracts, a ``BlobProto`` (``.binaryproto``) read with our schema."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from caffegen.errors import CaffegenError
from caffegen.io.schema import BVLC

FIX = "compute one with Caffe's compute_image_mean, or pass --mean-value B,G,R instead"


@dataclass(frozen=True)
class MeanFile:
    """A mean file as Caffe's DataTransformer reads it: (num, channels, height, width) and each channel's mean."""

    path: Path
    shape: tuple
    channel_means: tuple

    @property
    def channels(self):
        return self.shape[1]

    @property
    def size(self):
        """(height, width) the images must have when Caffe subtracts this mean."""
        return self.shape[2], self.shape[3]


def read_mean_file(path):
    """Read and check the mean file at ``path``; one that Caffe could not use is a one-line error."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CaffegenError(f"cannot read the mean file: {error.strerror}", path) from None
    blob = BVLC.BlobProto()
    try:
        blob.ParseFromString(data)
    except DecodeError:
        raise CaffegenError(f"not a mean file: it does not parse as a Caffe BlobProto (.binaryproto); {FIX}",
                            path) from None
    dims = list(blob.shape.dim) if blob.HasField("shape") else [blob.num, blob.channels, blob.height, blob.width]
    if not dims or len(dims) > 4 or min(dims) <= 0:
        raise CaffegenError(f"not a mean file: its blob has no image shape (dims {dims}); {FIX}", path)
    shape = tuple(dims + [1] * (4 - len(dims)))  # Caffe reads num, channels, height, width as legacy axes
    values = blob.data if len(blob.data) else blob.double_data
    count = int(np.prod(shape))
    if len(values) != count:
        raise CaffegenError(f"not a usable mean file: its shape {'×'.join(map(str, shape))} needs {count} values, "
                            f"it holds {len(values)}; {FIX}", path)
    means = np.asarray(values, dtype=np.float64).reshape(shape[0], shape[1], -1).mean(axis=(0, 2))
    return MeanFile(path, shape, tuple(float(mean) for mean in means))
