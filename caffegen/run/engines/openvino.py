"""OpenVINO as an engine: a deploy net converted to ONNX in memory, read and compiled by OpenVINO for the CPU.

OpenVINO's CPU plugin computes in bfloat16 where the processor has it unless told otherwise: caffegen
asks for float32, the precision Caffe computes in.
"""

from caffegen.errors import CaffegenError
from caffegen.io.onnxfile import onnx_module
from caffegen.run.engines.inmemory import InMemoryOnnx, first_line

INSTALL_HINT = "pip install 'caffegen[openvino]'"
DEVICE = "CPU"
FLOAT32 = {"INFERENCE_PRECISION_HINT": "f32"}


def openvino_module():
    """The ``openvino`` module (and ``onnx``, which the conversion writes), refusing missing ones in one line."""
    onnx_module(INSTALL_HINT)
    try:
        import openvino
    except ImportError:
        raise CaffegenError(f"OpenVINO is not installed: {INSTALL_HINT}") from None
    return openvino


def openvino_title():
    """``OpenVINO 2024.x.y``, refusing a missing OpenVINO."""
    return f"OpenVINO {openvino_module().__version__.split('-')[0]}"


class OpenVINOSession:
    """A deploy net and its weights converted to ONNX in memory (batch dynamic), compiled by OpenVINO for the CPU.

    One compiled model per output asked for, compiled the first time it is asked for.
    """

    def __init__(self, deploy, weights):
        self.core = openvino_module().Core()
        self.deploy, self.converted = deploy, InMemoryOnnx(deploy, weights)
        self.compiled = {}

    def forward(self, input_blob, inputs, output):
        """The blob layer ``output`` writes, (N, values), for one mini-batch ``inputs`` (N, C, H, W)."""
        import numpy as np
        if output not in self.compiled:
            self.compiled[output] = self._compiled(output)
        try:
            found = self.compiled[output]({input_blob: np.ascontiguousarray(inputs, np.float32)})[0]
        except Exception as error:  # OpenVINO raises RuntimeError and its own types alike
            raise CaffegenError(f"OpenVINO cannot run the model: {first_line(error)}", self.deploy) from None
        return np.asarray(found).reshape(len(inputs), -1)

    def _compiled(self, output):
        """OpenVINO's compiled model computing the blob layer ``output`` writes."""
        _, model = self.converted.model(output)
        try:
            return self.core.compile_model(self.core.read_model(model.SerializeToString()), DEVICE, FLOAT32)
        except Exception as error:  # as above
            raise CaffegenError(f"OpenVINO cannot load the model: {first_line(error)}", self.deploy) from None
