"""Convolution, Deconvolution, Pooling and InnerProduct as ONNX nodes, with Caffe's rounding and padding."""

from caffegen.net.onnx.graph import NotExpressible
from caffegen.net.shapes import conv_setup

MAX, AVE = 0, 1  # caffe.PoolingParameter.PoolMethod


def convolution(graph, io, transposed=False):
    """Caffe's Convolution (or Deconvolution): ONNX Conv (ConvTranspose) with its groups, dilation, pads, strides."""
    layer = io.layer
    param = layer.convolution_param
    axis, kernel, stride, pad, dilation = conv_setup(layer, io.input_shapes[0])
    if axis != 1:
        raise NotExpressible(f"its channel axis is {axis}; ONNX convolves on axis 1")
    inputs = [io.inputs[0], graph.constant(f"{layer.name}/weight", io.blobs[0])]
    if len(io.blobs) > 1:
        inputs.append(graph.constant(f"{layer.name}/bias", io.blobs[1]))
    op = "ConvTranspose" if transposed else "Conv"
    for output in io.outputs:
        graph.node(op, inputs, layer.name, [output], kernel_shape=kernel, strides=stride, pads=pad + pad,
                   dilations=dilation, group=param.group)


def deconvolution(graph, io):
    """Caffe's Deconvolution: ONNX ConvTranspose (the weights are laid out alike: inputs, outputs / group, kernel)."""
    convolution(graph, io, transposed=True)


def inner_product(graph, io):
    """Caffe's InnerProduct: the input flattened from ``axis``, times the weights (transposed or not), plus the bias."""
    layer = io.layer
    param = layer.inner_product_param
    axis = param.axis % len(io.input_shapes[0])
    flat = graph.node("Reshape", [io.inputs[0], graph.shape_constant(f"{layer.name}/flat", [0] * axis + [-1])],
                      layer.name)
    weight = io.blobs[0] if param.transpose else io.blobs[0].T
    product = graph.node("MatMul", [flat, graph.constant(f"{layer.name}/weight", weight)], layer.name,
                         None if len(io.blobs) > 1 else io.outputs)
    if len(io.blobs) > 1:
        graph.node("Add", [product, graph.constant(f"{layer.name}/bias", io.blobs[1])], layer.name, io.outputs)


def pooling(graph, io):
    """Caffe's Pooling: its ceil-rounded output size made exact by padding the end, AVE divided as Caffe divides."""
    param = io.layer.pooling_param
    if param.pool not in (MAX, AVE):
        raise NotExpressible("STOCHASTIC pooling is random in training and a weighted sum at test; ONNX has neither")
    if param.global_pooling:
        graph.node("GlobalMaxPool" if param.pool == MAX else "GlobalAveragePool", io.inputs[:1], io.layer.name,
                   io.outputs[:1])
        return
    windows = _windows(param, io.input_shapes[0][2:], io.output_shapes[0][2:])
    if param.pool == MAX:
        graph.node("MaxPool", io.inputs[:1], io.layer.name, io.outputs[:1], kernel_shape=windows.kernel,
                   strides=windows.stride, pads=windows.pad + windows.end_pad)
    else:
        _average(graph, io, windows)


class _Windows:
    """A pooling's kernel, stride and leading pad, and the trailing pad that yields Caffe's output size."""

    def __init__(self, kernel, stride, pad, sizes, pooled):
        self.kernel, self.stride, self.pad, self.sizes, self.pooled = kernel, stride, pad, sizes, pooled
        # Where Caffe drops a last window that would start in the padding, the last one kept may end before
        # the input does: no padding at the end then, and ONNX's floor rounding finds the same windows.
        self.end_pad = [max(0, (out - 1) * s + k - size - p)
                        for out, s, k, size, p in zip(pooled, stride, kernel, sizes, pad)]
        found = [(size + p + end - k) // s + 1 for size, p, end, k, s in zip(sizes, pad, self.end_pad, kernel, stride)]
        if found != list(pooled):
            raise NotExpressible(f"ONNX would pool {found} windows where Caffe pools {list(pooled)}")

    def divisors(self):
        """Caffe's AVE divisor of each output position: the window clipped to the padded input (H + pad)."""
        import numpy as np
        per_axis = []
        for out, s, k, size, p in zip(self.pooled, self.stride, self.kernel, self.sizes, self.pad):
            starts = np.arange(out) * s - p
            per_axis.append(np.minimum(starts + k, size + p) - starts)
        return np.outer(per_axis[0], per_axis[1])


def _windows(param, sizes, pooled):
    return _Windows(_pool_values(param, "kernel", param.kernel_size), _pool_values(param, "stride", param.stride),
                    _pool_values(param, "pad", param.pad), list(sizes), list(pooled))


def _pool_values(param, name, single):
    """A pooling setting per spatial axis: NAME_h and NAME_w, or one value for both."""
    if param.HasField(f"{name}_h") or param.HasField(f"{name}_w"):
        return [getattr(param, f"{name}_h"), getattr(param, f"{name}_w")]
    return [single, single]


def _average(graph, io, windows):
    """Zero-pad, sum every window (a mean over the whole kernel), then rescale each position to Caffe's divisor."""
    name = io.layer.name
    pads = graph.shape_constant(f"{name}/pads", [0, 0] + windows.pad + [0, 0] + windows.end_pad)
    padded = graph.node("Pad", [io.inputs[0], pads], name)
    mean = graph.node("AveragePool", [padded], name, kernel_shape=windows.kernel, strides=windows.stride)
    area = windows.kernel[0] * windows.kernel[1]
    correction = area / windows.divisors()
    graph.node("Mul", [mean, graph.constant(f"{name}/divisor", correction[None, None])], name, io.outputs[:1])
