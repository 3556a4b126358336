"""OpenCV's DNN module as an engine for Caffe models.

Edge and NPU toolchains, and OpenCV itself, run exactly the pair deploy.prototxt + caffemodel;
``readNetFromCaffe`` exists in OpenCV 4.x only (5.x removed it).
"""

import re

import numpy as np

from caffegen.errors import CaffegenError

INSTALL_HINT = "pip install 'opencv-python-headless<5'"

# Layer types whose OpenCV DNN output is known to differ from Caffe 1.0's: {type: why, for a layer, or None}.
# OpenCV's LRN reads no k and always adds 1 (features 30% off with k: 2); with k: 1 they agree.
OPENCV_DIFFERS = {
    "LRN": lambda layer: f"OpenCV DNN ignores k: {layer.lrn_param.k:g} of LRN '{layer.name}' (it adds 1)"
    if layer.lrn_param.k != 1 else None,
}


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


def _first_line(error):
    """OpenCV's reason in ``error``, without the source file and the error code before it."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    line = next((line for line in lines if "error:" in line), lines[-1] if lines else "unknown error")
    return re.sub(r"^.*error: \(-?\d+:[^)]*\) ", "", line)


def opencv_title():
    """``OpenCV DNN 4.x.y``, refusing a missing or unusable OpenCV."""
    return f"OpenCV DNN {opencv_dnn().__version__}"


class OpenCVSession:
    """A deploy net and its weights loaded into OpenCV DNN, computing one output blob per mini-batch."""

    def __init__(self, deploy, weights):
        self.deploy, self.net = deploy, opencv_net(deploy, weights)

    def forward(self, input_blob, inputs, output):
        """The blob ``output`` (N, values) for one mini-batch ``inputs`` (N, C, H, W)."""
        return opencv_batch(self.net, input_blob, inputs, output, self.deploy)
