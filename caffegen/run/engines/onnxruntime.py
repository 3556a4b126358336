"""ONNX Runtime as an engine: an ONNX model's outputs for given input blobs, on the CPU."""

from caffegen.errors import CaffegenError
from caffegen.io.onnxfile import model_bytes, onnx_module
from caffegen.run.engines.inmemory import InMemoryOnnx, first_line

INSTALL_HINT = "pip install 'caffegen[onnx]'"


def onnx_modules():
    """The ``onnx`` and ``onnxruntime`` modules, refusing missing ones in one line."""
    onnx = onnx_module(INSTALL_HINT)
    try:
        import onnxruntime
    except ImportError:
        raise CaffegenError(f"onnxruntime is not installed: {INSTALL_HINT}") from None
    return onnx, onnxruntime


def onnxruntime_forward(model, inputs, outputs):
    """{name: float32 array} of the values ``outputs`` that ONNX Runtime computes from ``inputs`` ({name: array}).

    ``model`` is a path, the serialized bytes, or an ``onnx.ModelProto``.
    """
    import numpy as np
    _, onnxruntime = onnx_modules()
    try:
        session = onnxruntime.InferenceSession(model_bytes(model), providers=["CPUExecutionProvider"])
        found = session.run(list(outputs), {name: np.ascontiguousarray(values, np.float32)
                                            for name, values in inputs.items()})
    except Exception as error:  # ONNX Runtime's own exception types are not importable by name
        raise CaffegenError(f"ONNX Runtime cannot run the model: {first_line(error)}") from None
    return dict(zip(outputs, found))


def onnxruntime_title():
    """``ONNX Runtime 1.x.y``, refusing a missing ONNX or ONNX Runtime."""
    return f"ONNX Runtime {onnx_modules()[1].__version__}"


class OnnxRuntimeSession:
    """A deploy net and its weights converted to ONNX in memory (batch dynamic) and run by ONNX Runtime.

    One ONNX Runtime session is built per output asked for, the first time it is asked for.
    """

    def __init__(self, deploy, weights):
        onnx_modules()
        self.deploy, self.converted = deploy, InMemoryOnnx(deploy, weights)
        self.sessions = {}

    def forward(self, input_blob, inputs, output):
        """The blob layer ``output`` writes, (N, values), for one mini-batch ``inputs`` (N, C, H, W)."""
        import numpy as np
        if output not in self.sessions:
            self.sessions[output] = self._session(output)
        blob, session = self.sessions[output]
        try:
            found = session.run([blob], {input_blob: np.ascontiguousarray(inputs, np.float32)})[0]
        except Exception as error:  # ONNX Runtime's own exception types are not importable by name
            raise CaffegenError(f"ONNX Runtime cannot run the model: {first_line(error)}", self.deploy) from None
        return found.reshape(len(inputs), -1)

    def _session(self, output):
        """(blob, ONNX Runtime session) computing the blob layer ``output`` writes."""
        _, onnxruntime = onnx_modules()
        blob, model = self.converted.model(output)
        try:
            return blob, onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception as error:  # as above
            raise CaffegenError(f"ONNX Runtime cannot load the model: {first_line(error)}", self.deploy) from None
