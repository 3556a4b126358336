"""Caffe's activations, Softmax and test-time Dropout as ONNX nodes."""


def relu(graph, io):
    """Caffe's ReLU: ONNX Relu, or LeakyRelu with its negative_slope."""
    slope = io.layer.relu_param.negative_slope
    if slope:
        graph.node("LeakyRelu", io.inputs, io.layer.name, io.outputs, alpha=slope)
    else:
        graph.node("Relu", io.inputs, io.layer.name, io.outputs)


def prelu(graph, io):
    """Caffe's PReLU: one slope per channel (axis 1), or one for all."""
    slopes = io.blobs[0]
    rank = len(io.input_shapes[0])
    if not io.layer.prelu_param.channel_shared:
        slopes = slopes.reshape((-1,) + (1,) * (rank - 2))
    graph.node("PRelu", [io.inputs[0], graph.constant(f"{io.layer.name}/slope", slopes)], io.layer.name, io.outputs)


def elu(graph, io):
    """Caffe's ELU with its alpha."""
    graph.node("Elu", io.inputs, io.layer.name, io.outputs, alpha=io.layer.elu_param.alpha)


def softmax(graph, io):
    """Caffe's Softmax: over one axis, as ONNX's Softmax does since opset 13."""
    axis = io.layer.softmax_param.axis % len(io.input_shapes[0])
    graph.node("Softmax", io.inputs, io.layer.name, io.outputs, axis=axis)


def dropout(graph, io):
    """Caffe's Dropout at test time: the input as it is (Caffe scales in training, not at test)."""
    graph.copy(io.inputs[0], io.outputs[0], io.layer.name)


def plain(op):
    """A converter for a layer that is the ONNX operator ``op`` without settings (Sigmoid, TanH, AbsVal)."""
    def convert(graph, io):
        graph.node(op, io.inputs, io.layer.name, io.outputs)
    convert.__doc__ = f"Caffe's layer as ONNX {op}."
    return convert
