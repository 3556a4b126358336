"""Images as Caffe 1.0's ImageData layer feeds them, in numpy: what an engine other than Caffe is given."""

from pathlib import Path

import numpy as np

from caffegen.errors import CaffegenError
from caffegen.io.caffemodel import read_mean_file
from caffegen.run.engines.opencv import opencv_dnn


def caffe_input(layer, paths, folder):
    """(N, C, H, W) float32 of the image files ``paths`` as Caffe 1.0's ImageData ``layer`` feeds them in TEST.

    As Caffe does: ``cv2.imread`` in colour or grey, ``cv2.resize`` (INTER_LINEAR) to
    new_height×new_width when both are set, a centre crop of crop_size (offsets rounded down),
    minus the mean file (at the crop's place; relative to ``folder``) or the mean values, times
    scale; channels first, in the BGR order imread gives.
    """
    cv2 = opencv_dnn()
    params, transform = layer.image_data_param, layer.transform_param
    mean = read_mean_file(Path(folder) / transform.mean_file) if transform.mean_file else None
    batch = []
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR if params.is_color else cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise CaffegenError("OpenCV cannot read this image", path)
        if params.new_height > 0 and params.new_width > 0:
            image = cv2.resize(image, (params.new_width, params.new_height))
        pixels = image.reshape(image.shape[0], image.shape[1], -1).transpose(2, 0, 1).astype(np.float32)
        batch.append(_transformed(pixels, transform, mean, path))
    return np.stack(batch)


def _transformed(pixels, transform, mean, path):
    """``pixels`` (C, H, W) cropped at the centre, the mean subtracted and scaled, as Caffe's DataTransformer."""
    height, width = pixels.shape[1:]
    crop = transform.crop_size
    top, left = ((height - crop) // 2, (width - crop) // 2) if crop else (0, 0)
    rows, cols = (slice(top, top + crop), slice(left, left + crop)) if crop else (slice(None), slice(None))
    if mean is not None:
        if mean.shape != pixels.shape:
            raise CaffegenError(f"the mean file's image is {mean.shape}, the image {pixels.shape} (channels, "
                                "height, width): Caffe needs them equal", path)
        pixels = pixels - mean
    elif transform.mean_value:
        values = list(transform.mean_value)
        pixels = pixels - np.asarray(values * len(pixels) if len(values) == 1 else values,
                                     np.float32)[:len(pixels), None, None]
    return np.ascontiguousarray(pixels[:, rows, cols] * np.float32(transform.scale))
