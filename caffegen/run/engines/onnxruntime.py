"""ONNX Runtime as an engine: an ONNX model's outputs for given input blobs, on the CPU."""

from caffegen.errors import CaffegenError

INSTALL_HINT = "pip install 'caffegen[onnx]'"


def onnx_modules():
    """The ``onnx`` and ``onnxruntime`` modules, refusing missing ones in one line."""
    try:
        import onnx
        import onnxruntime
    except ImportError as error:
        raise CaffegenError(f"{error.name} is not installed: {INSTALL_HINT}") from None
    return onnx, onnxruntime


def onnxruntime_forward(model, inputs, outputs):
    """{name: float32 array} of the values ``outputs`` that ONNX Runtime computes from ``inputs`` ({name: array}).

    ``model`` is a path, the serialized bytes, or an ``onnx.ModelProto``.
    """
    import numpy as np
    onnx, onnxruntime = onnx_modules()
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    try:
        session = onnxruntime.InferenceSession(model if isinstance(model, bytes) else str(model),
                                               providers=["CPUExecutionProvider"])
        found = session.run(list(outputs), {name: np.ascontiguousarray(values, np.float32)
                                            for name, values in inputs.items()})
    except Exception as error:  # ONNX Runtime's own exception types are not importable by name
        raise CaffegenError(f"ONNX Runtime cannot run the model: {_first_line(error)}") from None
    return dict(zip(outputs, found))


def onnxruntime_title():
    """``ONNX Runtime 1.x.y``, refusing a missing ONNX or ONNX Runtime."""
    return f"ONNX Runtime {onnx_modules()[1].__version__}"


class OnnxRuntimeSession:
    """A deploy net and its weights converted to ONNX in memory (batch dynamic) and run by ONNX Runtime.

    The graph gives out the blob a layer writes, by the layer's name, as OpenCV's sessions do; one
    ONNX Runtime session is built per output asked for, the first time it is asked for.
    """

    def __init__(self, deploy, weights):
        from caffegen.io.caffemodel import read_caffemodel
        from caffegen.net.onnx.layout import layout, prepared_net
        onnx_modules()
        self.deploy, self.weights = deploy, read_caffemodel(weights)
        self.layout = layout(prepared_net(deploy), deploy)
        self.blob_of = {result.name: list(result.tops)[-1] for result in self.layout.layers if result.tops}
        self.sessions = {}

    def forward(self, input_blob, inputs, output):
        """The blob layer ``output`` writes, (N, values), for one mini-batch ``inputs`` (N, C, H, W)."""
        import numpy as np
        blob = self.blob_of[output]
        if blob not in self.sessions:
            self.sessions[blob] = self._session(blob)
        try:
            found = self.sessions[blob].run([blob], {input_blob: np.ascontiguousarray(inputs, np.float32)})[0]
        except Exception as error:  # ONNX Runtime's own exception types are not importable by name
            raise CaffegenError(f"ONNX Runtime cannot run the model: {_first_line(error)}", self.deploy) from None
        return found.reshape(len(inputs), -1)

    def _session(self, blob):
        from caffegen.net.onnx import build_onnx
        _, onnxruntime = onnx_modules()
        model = build_onnx(self.layout.layers, self.weights, self.layout.inputs, [blob], None, "trunk")
        try:
            return onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception as error:  # as above
            raise CaffegenError(f"ONNX Runtime cannot load the model: {_first_line(error)}", self.deploy) from None


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
