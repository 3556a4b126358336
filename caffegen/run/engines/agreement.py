"""Whether another engine computes what Caffe computes: on probabilities, and on trunk features.

The check feeds both engines the same input blob, taken from Caffe's own data layer (or the same
ImageData preprocessing), so it compares the engines and not two implementations of preprocessing.
"""

from dataclasses import dataclass

import numpy as np

from caffegen.defaults import FORWARD_BATCH
from caffegen.run.engines import ENGINES
from caffegen.run.engines.caffe import forward_images

# Probabilities are in [0, 1]. float32 carries about 7 digits; two engines summing the same
# products in other orders (im2col + BLAS against OpenCV's own kernels) differ by about 1e-6 of
# the logits on deep nets, and a softmax changes by at most a quarter of its inputs' change: 1e-4
# leaves two orders of magnitude for depth, and is far below any difference a user would see.
PROBABILITY_TOLERANCE = 1e-4
# Features are compared relative to their scale: max |Δ| / max |Caffe's feature| over a mini-batch.
# float32 carries about 7 digits, and two engines summing the same products in other orders
# (im2col + BLAS against OpenCV's own kernels) drift apart with depth: from the same JPEG photos
# (decoded, resized and cropped by each side) the zoo's trunks differ by 2.6e-7 (DenseNet-121) to
# 3e-6 (VGG-16's 4096-wide fc7). A real disagreement moves features by far more: one grey level
# of the input is 4e-3 of its range, and OpenCV's LRN ignoring k: 2 moves them by 0.33. 1e-4
# leaves 30× for deeper or wider nets and lies far below either.
FEATURE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class EngineCheck:
    """How far an engine's probabilities are from Caffe's on some images."""

    engine: str  # its title and version
    images: int
    max_difference: float
    tolerance: float = PROBABILITY_TOLERANCE

    @property
    def passed(self):
        return self.max_difference <= self.tolerance

    def line(self):
        verdict = "agrees with" if self.passed else "DIFFERS from"
        return (f"{self.engine} {verdict} Caffe on {self.images} images: "
                f"max |Δ probability| {self.max_difference:.2e} (tolerance {self.tolerance:.0e})")


def compare_probabilities(engine, caffe, found):
    """The EngineCheck of ``engine``'s probabilities ``found`` against Caffe's ``caffe`` (both (N, values))."""
    if found.size != caffe.size:
        return EngineCheck(engine, len(caffe), float("inf"))
    return EngineCheck(engine, len(caffe), float(np.abs(found.reshape(caffe.shape) - caffe).max()))


def output_layer(net, blob):
    """The name of the last layer of ``net`` that writes ``blob``: what an engine's session is asked for."""
    return [layer.name for layer in net.layer if blob in layer.top][-1]


def session_forward(session, input_blob, inputs, output, batch_size=FORWARD_BATCH):
    """The blob layer ``output`` writes, (N, values), computed by an engine's ``session`` a mini-batch at a time."""
    return np.concatenate([session.forward(input_blob, inputs[start:start + batch_size], output)
                           for start in range(0, len(inputs), batch_size)])


def check_engine(name, target, model, paths, device=None, reporter=None):
    """Compare engine ``name``'s probabilities for ``model`` with real Caffe's on the images ``paths``, both engines
    fed the input blob Caffe's data layer made."""
    engine = ENGINES[name]
    title = engine.title()
    input_blob, output = model.input_blob, model.output_blob
    blobs = forward_images(target, model, paths, [input_blob, output], device=device, reporter=reporter)
    inputs = blobs[input_blob].reshape(len(paths), *model.input_shape[1:])
    session = engine.load(model.deploy, model.weights)
    found = session_forward(session, input_blob, inputs, output_layer(model.deploy_net, output))
    return compare_probabilities(title, blobs[output], found)


@dataclass(frozen=True)
class FeatureCheck:
    """How far an engine's trunk features are from Caffe's on one mini-batch, relative to their scale."""

    engine: str  # its title and version
    images: int
    max_difference: float  # max |Δ| / max |Caffe's feature|
    tolerance: float = FEATURE_TOLERANCE

    @property
    def passed(self):
        return self.max_difference <= self.tolerance

    def line(self):
        verdict = "agrees with" if self.passed else "DIFFERS from"
        return (f"{self.engine} {verdict} Caffe on the first {self.images} images: "
                f"max |Δ feature| {self.max_difference:.2e} of the features' scale "
                f"(tolerance {self.tolerance:.0e})")


def compare_features(engine, caffe, found):
    """The FeatureCheck of ``engine``'s features ``found`` against Caffe's ``caffe`` (both (N, values))."""
    if found.shape != caffe.shape:
        return FeatureCheck(engine, len(caffe), float("inf"))
    scale = float(np.abs(caffe).max())
    difference = float(np.abs(found - caffe).max())
    return FeatureCheck(engine, len(caffe), difference / scale if scale else difference)
