"""A Caffe deploy net and its weights as an ONNX model: one converter per layer type, one room per family.

The net given is in single assignment (``net/singleassign.py``), so every Caffe blob is an ONNX value
of the same name. Shapes come from ``net/shapes.py``; a converter uses them only where ONNX needs a
fixed size (pooling's padding, Slice, Crop), never for the batch axis, which stays dynamic unless fixed.
"""

from caffegen.errors import CaffegenError
from caffegen.io.onnxfile import onnx_model
from caffegen.net.onnx import activations, elementwise, normalization, shapeops, spatial
from caffegen.net.onnx.graph import BATCH, LayerIO, NotExpressible, OnnxGraph

OPSET = 17  # ONNX Runtime 1.17 and every later one runs it; LRN, Softmax(axis), Pad-as-input are all there
IR_VERSION = 8  # the IR version that opset 17 came with

CONVERTERS = {
    "Convolution": spatial.convolution,
    "Deconvolution": spatial.deconvolution,
    "InnerProduct": spatial.inner_product,
    "Pooling": spatial.pooling,
    "BatchNorm": normalization.batch_norm,
    "Scale": normalization.scale,
    "Bias": normalization.bias,
    "LRN": normalization.lrn,
    "Eltwise": elementwise.eltwise,
    "Power": elementwise.power,
    "Concat": shapeops.concat,
    "Slice": shapeops.slice_layer,
    "Split": shapeops.split,
    "Reshape": shapeops.reshape,
    "Flatten": shapeops.flatten,
    "Crop": shapeops.crop,
    "ReLU": activations.relu,
    "PReLU": activations.prelu,
    "ELU": activations.elu,
    "Softmax": activations.softmax,
    "Dropout": activations.dropout,
    "Sigmoid": activations.plain("Sigmoid"),
    "TanH": activations.plain("Tanh"),
    "AbsVal": activations.plain("Abs"),
}
INPUT = "Input"


def unconvertible(layers):
    """The layers among ``layers`` (LayerShapes) of a type no converter handles, in order."""
    return [result for result in layers if result.layer is not None and result.type != INPUT
            and result.type not in CONVERTERS]


def refuse_unconvertible(layers, path=None):
    """Refuse, in one line, a net with a layer ONNX cannot express here, naming the first of each such type."""
    found = {}
    for result in unconvertible(layers):
        found.setdefault(result.type, result.name)
    if found:
        named = ", ".join(f"'{name}' ({kind})" for kind, name in found.items())
        raise CaffegenError(f"cannot convert to ONNX: no ONNX form for layer {named}", path)


def build_onnx(layers, weights, inputs, outputs, batch=None, name="caffe"):
    """The ONNX model of the net whose layers' shapes are ``layers`` (LayerShapes, single assignment).

    ``inputs`` are the net's input blobs, ``outputs`` the blobs the graph gives out; ``weights`` is
    a Caffemodel; ``batch`` None leaves the batch axis dynamic (named N).
    """
    refuse_unconvertible(layers)
    graph = OnnxGraph()
    shapes = {blob: shape for result in layers for blob, shape in result.tops.items()}
    graph.reserve(shapes)
    for result in layers:
        if result.layer is not None and result.type != INPUT:
            _convert(graph, result, shapes, weights)
    return onnx_model(graph, [_value(blob, shapes, batch) for blob in inputs],
                      [_value(blob, shapes, batch) for blob in outputs], OPSET, IR_VERSION, name)


def _value(blob, shapes, batch):
    """(``blob``, its dimensions): the first axis ``batch``, or dynamic (N)."""
    shape = shapes.get(blob)
    return blob, None if shape is None else [batch or BATCH] + list(shape[1:])


def _convert(graph, result, shapes, weights):
    """Add the nodes of one layer; a setting ONNX cannot express is one line naming the layer."""
    layer = result.layer
    io = LayerIO(layer, list(layer.bottom), list(layer.top), [shapes[blob] for blob in layer.bottom],
                 [shapes[blob] for blob in layer.top], _blobs(layer, result, weights))
    try:
        CONVERTERS[layer.type](graph, io)
    except NotExpressible as reason:
        raise CaffegenError(f"cannot convert layer '{layer.name}' ({layer.type}) to ONNX: {reason}") from None


def _blobs(layer, result, weights):
    """The layer's learnable blobs as float32 arrays of the shapes Caffe gives them; missing ones are refused."""
    import numpy as np
    expected = result.params or []
    if not expected:
        return []
    if weights.layer(layer.name) is None:
        raise CaffegenError(f"layer '{layer.name}' ({layer.type}) has no weights in the caffemodel", weights.path)
    arrays = weights.values(layer.name)
    if len(arrays) != len(expected) or any(array.size != _count(shape) for array, shape in zip(arrays, expected)):
        found = [tuple(array.shape) for array in arrays]
        raise CaffegenError(f"layer '{layer.name}' ({layer.type}): the caffemodel's blobs {found} do not fit the "
                            f"shapes the net gives them {[tuple(shape) for shape in expected]}", weights.path)
    return [np.asarray(array, dtype=np.float32).reshape(shape) for array, shape in zip(arrays, expected)]


def _count(shape):
    total = 1
    for dim in shape:
        total *= dim
    return total
