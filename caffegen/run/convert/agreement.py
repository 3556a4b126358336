"""ONNX Runtime against real Caffe on the same input blobs: every output compared, and the first layer that
differs found by comparing every intermediate blob.

The tolerances are those of every engine check (``run/engines/agreement.py``): probabilities within 1e-4, any other
value within 1e-4 of its own scale (max |value| of Caffe's), for the reasons given there.
"""

from dataclasses import dataclass

from caffegen.errors import CaffegenError
from caffegen.run.engines.agreement import FEATURE_TOLERANCE, PROBABILITY_TOLERANCE
from caffegen.run.engines.caffe import caffe_forward
from caffegen.run.engines.onnxruntime import onnxruntime_forward

SEED = 0
PROBABILITY_TYPES = {"Softmax"}


@dataclass(frozen=True)
class BlobCheck:
    """How far ONNX Runtime's value of one blob is from Caffe's."""

    blob: str
    max_difference: float  # max |Δ|
    scale: float  # max |Caffe's value|
    probabilities: bool  # compared absolutely (a Softmax output), else relative to the scale

    @property
    def measure(self):
        """The difference the tolerance applies to: absolute for probabilities, else relative to the scale."""
        if self.probabilities or not self.scale:
            return self.max_difference
        return self.max_difference / self.scale

    @property
    def tolerance(self):
        return PROBABILITY_TOLERANCE if self.probabilities else FEATURE_TOLERANCE

    @property
    def passed(self):
        return self.measure <= self.tolerance

    def words(self):
        """The difference in words: absolute for probabilities, else relative to the values' scale."""
        if self.probabilities:
            return f"max |Δ| {self.max_difference:.2e} (probabilities, tolerance {self.tolerance:.0e})"
        return (f"max |Δ| {self.max_difference:.2e} on values of scale {self.scale:.3g} "
                f"({self.measure:.2e} of it, tolerance {self.tolerance:.0e})")


def random_inputs(shapes):
    """{name: float32 array}: a fixed-seed normal blob of each input shape ({name: shape})."""
    import numpy as np
    rng = np.random.default_rng(SEED)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def is_probability(producer):
    """Whether the blob that LayerShapes ``producer`` writes holds probabilities (compared absolutely)."""
    return producer.type in PROBABILITY_TYPES


def compare_blob(blob, caffe, found, probabilities):
    """The BlobCheck of ONNX Runtime's ``found`` against Caffe's ``caffe`` (any shapes of the same size)."""
    import numpy as np
    found = np.asarray(found, np.float32).reshape(-1)
    caffe = np.asarray(caffe, np.float32).reshape(-1)
    if found.shape != caffe.shape:
        return BlobCheck(blob, float("inf"), float(np.abs(caffe).max(initial=0)), probabilities)
    return BlobCheck(blob, float(np.abs(found - caffe).max(initial=0)), float(np.abs(caffe).max(initial=0)),
                     probabilities)


def check_blobs(target, net, weights, model, inputs, blobs, producers, workdir):
    """The BlobChecks of ``blobs`` of ONNX ``model`` against Caffe's ``net`` with ``weights``, both fed ``inputs``.

    ``producers`` maps each blob to the layer that writes it (for the probability rule).
    """
    caffe = caffe_forward(target, net, weights, inputs, blobs, workdir)
    found = onnxruntime_forward(model, inputs, blobs)
    return [compare_blob(blob, caffe[blob], found[blob], is_probability(producers[blob]))
            for blob in blobs]


def first_difference(checks, producers):
    """A CaffegenError naming the first layer (in net order) with a blob outside the tolerance, or None."""
    failed = next((check for check in checks if not check.passed), None)
    if failed is None:
        return None
    layer = producers[failed.blob]
    return CaffegenError(f"ONNX Runtime DIFFERS from Caffe first at layer '{layer.name}' ({layer.type}), blob "
                         f"'{failed.blob}': {failed.words()}; nothing written")
