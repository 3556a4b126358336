"""BatchNorm, Scale, Bias and LRN as ONNX nodes."""

from caffegen.net.onnx.graph import NotExpressible

ACROSS_CHANNELS = 0  # caffe.LRNParameter.NormRegion


def batch_norm(graph, io):
    """Caffe's BatchNorm at test time: the stored mean and variance divided by the moving-average factor, and eps."""
    import numpy as np
    layer = io.layer
    param = layer.batch_norm_param
    if param.HasField("use_global_stats") and not param.use_global_stats:
        raise NotExpressible("use_global_stats: false normalises each batch by its own statistics, at test too")
    mean, variance, factor = io.blobs
    factor = float(factor.reshape(-1)[0])
    factor = 0.0 if factor == 0 else 1.0 / factor  # Caffe's rule for a factor of 0
    channels = mean.size
    inputs = [io.inputs[0], graph.constant(f"{layer.name}/gamma", np.ones(channels)),
              graph.constant(f"{layer.name}/beta", np.zeros(channels)),
              graph.constant(f"{layer.name}/mean", mean * factor),
              graph.constant(f"{layer.name}/variance", variance * factor)]
    graph.node("BatchNormalization", inputs, layer.name, io.outputs[:1], epsilon=param.eps)


def scale(graph, io):
    """Caffe's Scale: the input times a factor over axes [axis, axis + num_axes) (a blob or the second bottom)."""
    layer = io.layer
    param = layer.scale_param
    factor, blobs = _operand(graph, io, param, "factor")
    if not param.bias_term:
        graph.node("Mul", [io.inputs[0], factor], layer.name, io.outputs[:1])
        return
    product = graph.node("Mul", [io.inputs[0], factor], layer.name)
    bias = graph.constant(f"{layer.name}/bias", _broadcastable(blobs[-1], _trailing(io, param)))
    graph.node("Add", [product, bias], layer.name, io.outputs[:1])


def bias(graph, io):
    """Caffe's Bias: the input plus a term over axes [axis, axis + num_axes) (a blob or the second bottom)."""
    term, _ = _operand(graph, io, io.layer.bias_param, "bias")
    graph.node("Add", [io.inputs[0], term], io.layer.name, io.outputs[:1])


def _operand(graph, io, param, what):
    """The value that Scale or Bias broadcasts over its input, and the blobs left after it."""
    trailing = _trailing(io, param)
    if len(io.inputs) > 1:
        if not trailing:
            return io.inputs[1], io.blobs
        rank = len(io.input_shapes[1])
        axes = graph.shape_constant(f"{io.layer.name}/axes", range(rank, rank + trailing))
        return graph.node("Unsqueeze", [io.inputs[1], axes], io.layer.name), io.blobs
    return graph.constant(f"{io.layer.name}/{what}", _broadcastable(io.blobs[0], trailing)), io.blobs[1:]


def _trailing(io, param):
    """How many axes of the input follow those the operand covers."""
    rank = len(io.input_shapes[0])
    axis = param.axis % rank if rank else 0
    covered = len(io.input_shapes[1]) if len(io.inputs) > 1 else (rank - axis if param.num_axes == -1
                                                                   else param.num_axes)
    return rank - axis - covered


def _broadcastable(values, trailing):
    """``values`` with ``trailing`` axes of 1 after its own, so that it lines up with the input's axes."""
    return values.reshape(values.shape + (1,) * trailing)


def lrn(graph, io):
    """Caffe's LRN: ONNX LRN across channels; within a channel, x / (1 + alpha · mean of x² over a square)^beta."""
    layer = io.layer
    param = layer.lrn_param
    if param.norm_region == ACROSS_CHANNELS:
        graph.node("LRN", io.inputs[:1], layer.name, io.outputs[:1], size=param.local_size, alpha=param.alpha,
                   beta=param.beta, bias=param.k)
        return
    pad = (param.local_size - 1) // 2
    square = graph.node("Mul", [io.inputs[0], io.inputs[0]], layer.name)
    mean = graph.node("AveragePool", [square], layer.name, kernel_shape=[param.local_size] * 2, pads=[pad] * 4,
                      count_include_pad=1)
    scaled = graph.node("Mul", [mean, graph.constant(f"{layer.name}/alpha", param.alpha)], layer.name)
    shifted = graph.node("Add", [scaled, graph.constant(f"{layer.name}/one", 1.0)], layer.name)
    power = graph.node("Pow", [shifted, graph.constant(f"{layer.name}/beta", -param.beta)], layer.name)
    graph.node("Mul", [io.inputs[0], power], layer.name, io.outputs[:1])
