"""The engines that run a Caffe model's forward pass: Caffe itself, and those trusted once they agree with it.

Caffe (:mod:`caffegen.run.engines.caffe`) is the reference: it trains, and it computes what the
others are checked against. Every other engine is one :class:`Engine` of ``ENGINES``: its title
(refusing in one line when it is not installed), how it loads a deploy net and its weights into a
session that computes one output blob per mini-batch, and the layers it is known to compute
otherwise than Caffe. A new engine is one module here and one entry in the table.
"""

from dataclasses import dataclass
from typing import Callable

from caffegen.job.options import ONNXRUNTIME, OPENCV, OPENVINO
from caffegen.run.engines.onnxruntime import OnnxRuntimeSession, onnxruntime_title
from caffegen.run.engines.opencv import OPENCV_DIFFERS, OpenCVSession, opencv_title
from caffegen.run.engines.openvino import OpenVINOSession, openvino_title


@dataclass(frozen=True)
class Engine:
    """An engine other than Caffe: ``title()`` (refusing a missing install), ``load(deploy, weights)`` → a session
    with ``forward(input_blob, inputs, output)``, and ``differs`` {layer type: why a layer would differ, or None}."""

    name: str
    title: Callable
    load: Callable
    differs: dict

    def differences(self, net):
        """Why each layer of ``net`` is known to be computed otherwise than by Caffe (empty when none is)."""
        return [why for layer in net.layer if layer.type in self.differs
                for why in [self.differs[layer.type](layer)] if why]


ENGINES = {
    OPENCV: Engine(OPENCV, opencv_title, OpenCVSession, OPENCV_DIFFERS),
    ONNXRUNTIME: Engine(ONNXRUNTIME, onnxruntime_title, OnnxRuntimeSession, {}),
    OPENVINO: Engine(OPENVINO, openvino_title, OpenVINOSession, {}),
}
