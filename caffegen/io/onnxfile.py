"""ONNX models as protobuf: the one module that imports ``onnx``.

The net layer builds a graph as plain values (nodes with their attributes, constant arrays, the
inputs and outputs with their dimensions); this module turns them into an ``onnx.ModelProto`` and
its bytes, as :mod:`caffegen.io.prototxt` does for Caffe's text format.
"""

from dataclasses import dataclass, field

from caffegen.errors import CaffegenError

INSTALL_HINT = "pip install 'caffegen[onnx]'"


@dataclass
class OnnxNode:
    """One operator of a graph: its type, the values it reads and writes, its unique name, its attributes."""

    op: str
    inputs: list
    outputs: list
    name: str
    attributes: dict = field(default_factory=dict)


def onnx_module(hint=INSTALL_HINT):
    """The ``onnx`` module, refusing a missing one in one line that ends with the install ``hint``."""
    try:
        import onnx
    except ImportError:
        raise CaffegenError(f"onnx is not installed: {hint}") from None
    return onnx


def onnx_model(graph, inputs, outputs, opset, ir_version, name):
    """The ``onnx.ModelProto`` of ``graph`` (its ``nodes`` and ``initializers``: [(name, array)]), whose float
    ``inputs`` and ``outputs`` are [(name, dimensions or None)]."""
    onnx_module()
    from onnx import TensorProto, helper, numpy_helper
    nodes = [helper.make_node(node.op, node.inputs, node.outputs, name=node.name, **node.attributes)
             for node in graph.nodes]
    tensors = [numpy_helper.from_array(values, name) for name, values in graph.initializers]
    values = [[helper.make_tensor_value_info(blob, TensorProto.FLOAT, dims) for blob, dims in side]
              for side in (inputs, outputs)]
    model = helper.make_model(helper.make_graph(nodes, name, values[0], values[1], tensors),
                              opset_imports=[helper.make_opsetid("", opset)], producer_name="caffegen")
    model.ir_version = ir_version
    return model


def model_bytes(model):
    """The serialized bytes of ``model``: an ``onnx.ModelProto``, bytes already, or a file's path."""
    if isinstance(model, bytes):
        return model
    if hasattr(model, "SerializeToString"):
        return model.SerializeToString()
    with open(model, "rb") as file:
        return file.read()


def keep_outputs(model, count):
    """Keep only the first ``count`` outputs of ``model``'s graph (the others were given out for a check)."""
    del model.graph.output[count:]
