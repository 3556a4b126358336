"""OpenCV's DNN module as a second engine for Caffe models, and the check that it agrees with Caffe.

Edge and NPU toolchains, and OpenCV itself, run exactly the pair deploy.prototxt + caffemodel;
``readNetFromCaffe`` exists in OpenCV 4.x only (5.x removed it). The check feeds both engines the
same input blob, taken from Caffe's own data layer, so it compares the engines and not two
implementations of the preprocessing.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caffegen.defaults import FORWARD_BATCH
from caffegen.errors import CaffegenError
from caffegen.io.caffemodel import read_mean_file
from caffegen.run.forward import forward_images

# Probabilities are in [0, 1]. float32 carries about 7 digits; two engines summing the same
# products in other orders (im2col + BLAS against OpenCV's own kernels) differ by about 1e-6 of
# the logits on deep nets, and a softmax changes by at most a quarter of its inputs' change: 1e-4
# leaves two orders of magnitude for depth, and is far below any difference a user would see.
PROBABILITY_TOLERANCE = 1e-4
INSTALL_HINT = "pip install 'opencv-python-headless<5'"


def opencv_dnn():
    """OpenCV's ``cv2`` module, refusing a missing one or a 5.x that cannot read Caffe models."""
    try:
        import cv2
    except ImportError:
        raise CaffegenError(f"OpenCV is not installed: {INSTALL_HINT}") from None
    if int(cv2.__version__.split(".")[0]) >= 5 or not hasattr(cv2.dnn, "readNetFromCaffe"):
        raise CaffegenError(f"OpenCV {cv2.__version__} cannot read Caffe models (5.x removed readNetFromCaffe): "
                            f"{INSTALL_HINT}")
    return cv2


def opencv_net(deploy, weights):
    """OpenCV DNN's net of ``deploy`` with ``weights``, refusing one it cannot read in one line."""
    cv2 = opencv_dnn()
    try:
        return cv2.dnn.readNetFromCaffe(str(deploy), str(weights))
    except cv2.error as error:
        raise CaffegenError(f"OpenCV cannot read the model: {_first_line(error)}", deploy) from None


def opencv_batch(net, input_blob, inputs, output, deploy=None):
    """The output ``output`` (N, values) of OpenCV net ``net`` for one mini-batch ``inputs`` (N, C, H, W)."""
    cv2 = opencv_dnn()
    net.setInput(np.ascontiguousarray(inputs, dtype=np.float32), input_blob)
    try:
        return net.forward(output).reshape(len(inputs), -1)
    except cv2.error as error:
        raise CaffegenError(f"OpenCV cannot run the model: {_first_line(error)}", deploy) from None


def opencv_forward(deploy, weights, input_blob, inputs, output, batch_size=FORWARD_BATCH):
    """The blob ``output`` (N, values) OpenCV DNN computes from ``inputs`` (N, C, H, W) fed to ``input_blob``."""
    net = opencv_net(deploy, weights)
    return np.concatenate([opencv_batch(net, input_blob, inputs[start:start + batch_size], output, deploy)
                           for start in range(0, len(inputs), batch_size)])


def _first_line(error):
    """OpenCV's reason in ``error``, without the source file and the error code before it."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    line = next((line for line in lines if "error:" in line), lines[-1] if lines else "unknown error")
    return re.sub(r"^.*error: \(-?\d+:[^)]*\) ", "", line)


@dataclass(frozen=True)
class EngineCheck:
    """How far OpenCV's probabilities are from Caffe's on some images."""

    images: int
    max_difference: float
    tolerance: float = PROBABILITY_TOLERANCE

    @property
    def passed(self):
        return self.max_difference <= self.tolerance

    def line(self):
        verdict = "agrees with" if self.passed else "DIFFERS from"
        return (f"OpenCV DNN {opencv_dnn().__version__} {verdict} Caffe on {self.images} images: "
                f"max |Δ probability| {self.max_difference:.2e} (tolerance {self.tolerance:.0e})")


def check_opencv(target, model, paths, device=None, reporter=None):
    """Compare OpenCV's probabilities for ``model`` with real Caffe's on the images ``paths``."""
    opencv_dnn()
    input_blob, output = model.input_blob, model.output_blob
    blobs = forward_images(target, model, paths, [input_blob, output], device=device, reporter=reporter)
    inputs = blobs[input_blob].reshape(len(paths), *model.input_shape[1:])
    found = opencv_forward(model.deploy, model.weights, input_blob, inputs, output)
    return EngineCheck(len(paths), float(np.abs(found.reshape(blobs[output].shape) - blobs[output]).max()))


# --- trunk features ----------------------------------------------------------------------------

# Features are compared relative to their scale: max |Δ| / max |Caffe's feature| over a mini-batch.
# float32 carries about 7 digits, and two engines summing the same products in other orders
# (im2col + BLAS against OpenCV's own kernels) drift apart with depth: from the same JPEG photos
# (decoded, resized and cropped by each side) the zoo's trunks differ by 2.6e-7 (DenseNet-121) to
# 3e-6 (VGG-16's 4096-wide fc7). A real disagreement moves features by far more: one grey level
# of the input is 4e-3 of its range, and OpenCV's LRN ignoring k: 2 moves them by 0.33. 1e-4
# leaves 30× for deeper or wider nets and lies far below either.
FEATURE_TOLERANCE = 1e-4


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


@dataclass(frozen=True)
class FeatureCheck:
    """How far OpenCV's trunk features are from Caffe's on one mini-batch, relative to their scale."""

    images: int
    max_difference: float  # max |Δ| / max |Caffe's feature|
    tolerance: float = FEATURE_TOLERANCE

    @property
    def passed(self):
        return self.max_difference <= self.tolerance

    def line(self):
        verdict = "agrees with" if self.passed else "DIFFERS from"
        return (f"OpenCV DNN {opencv_dnn().__version__} {verdict} Caffe on the first {self.images} images: "
                f"max |Δ feature| {self.max_difference:.2e} of the features' scale "
                f"(tolerance {self.tolerance:.0e})")


def compare_features(caffe, found):
    """The FeatureCheck of OpenCV's features ``found`` against Caffe's ``caffe`` (both (N, values))."""
    if found.shape != caffe.shape:
        return FeatureCheck(len(caffe), float("inf"))
    scale = float(np.abs(caffe).max())
    difference = float(np.abs(found - caffe).max())
    return FeatureCheck(len(caffe), difference / scale if scale else difference)
