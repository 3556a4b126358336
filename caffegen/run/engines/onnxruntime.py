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
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CaffegenError(f"ONNX Runtime cannot run the model: {reason}") from None
    return dict(zip(outputs, found))
