"""OpenCV's DNN module as a second engine for Caffe models, and the check that it agrees with Caffe.

Edge and NPU toolchains, and OpenCV itself, run exactly the pair deploy.prototxt + caffemodel;
``readNetFromCaffe`` exists in OpenCV 4.x only (5.x removed it). The check feeds both engines the
same input blob, taken from Caffe's own data layer, so it compares the engines and not two
implementations of the preprocessing.
"""

from dataclasses import dataclass

import numpy as np

from caffegen.errors import CaffegenError
from caffegen.run.forward import DEFAULT_BATCH, forward_images

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


def opencv_forward(deploy, weights, input_blob, inputs, output, batch_size=DEFAULT_BATCH):
    """The blob ``output`` (N, values) OpenCV DNN computes from ``inputs`` (N, C, H, W) fed to ``input_blob``."""
    cv2 = opencv_dnn()
    try:
        net = cv2.dnn.readNetFromCaffe(str(deploy), str(weights))
    except cv2.error as error:
        raise CaffegenError(f"OpenCV cannot read the model: {_first_line(error)}", deploy) from None
    results = []
    for start in range(0, len(inputs), batch_size):
        net.setInput(np.ascontiguousarray(inputs[start:start + batch_size]), input_blob)
        try:
            results.append(net.forward(output).reshape(min(batch_size, len(inputs) - start), -1))
        except cv2.error as error:
            raise CaffegenError(f"OpenCV cannot run the model: {_first_line(error)}", deploy) from None
    return np.concatenate(results)


def _first_line(error):
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return next((line for line in lines if "error:" in line), lines[-1] if lines else "unknown error")


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


def check_opencv(target, model, paths, device=None, echo=None):
    """Compare OpenCV's probabilities for ``model`` with real Caffe's on the images ``paths``."""
    opencv_dnn()
    input_blob, output = model.input_blob, model.output_blob
    blobs = forward_images(target, model, paths, [input_blob, output], device=device, echo=echo)
    inputs = blobs[input_blob].reshape(len(paths), *model.input_shape[1:])
    found = opencv_forward(model.deploy, model.weights, input_blob, inputs, output)
    return EngineCheck(len(paths), float(np.abs(found.reshape(blobs[output].shape) - blobs[output]).max()))
