"""Concat, Slice, Split, Reshape, Flatten and Crop as ONNX nodes; the batch axis stays whatever it is fed."""


def concat(graph, io):
    """Caffe's Concat on its axis (or legacy concat_dim)."""
    param = io.layer.concat_param
    axis = param.concat_dim if param.HasField("concat_dim") else param.axis
    graph.node("Concat", io.inputs, io.layer.name, io.outputs, axis=axis % len(io.input_shapes[0]))


def slice_layer(graph, io):
    """Caffe's Slice on its axis (or legacy slice_dim): each top one ONNX Slice, at the sizes Caffe gives them."""
    param = io.layer.slice_param
    rank = len(io.input_shapes[0])
    axis = (param.slice_dim if param.HasField("slice_dim") else param.axis) % rank
    start = 0
    for output, shape in zip(io.outputs, io.output_shapes):
        _slice(graph, io, output, [axis], [start], [start + shape[axis]])
        start += shape[axis]


def split(graph, io):
    """Caffe's Split: every top the input."""
    for output in io.outputs:
        graph.copy(io.inputs[0], output, io.layer.name)


def reshape(graph, io):
    """Caffe's Reshape: its 0 (copy) and -1 (inferred) mean what ONNX's do; axes outside its range are kept."""
    param = io.layer.reshape_param
    rank = len(io.input_shapes[0])
    start = param.axis if param.axis >= 0 else rank + param.axis + 1
    end = rank if param.num_axes == -1 else start + param.num_axes
    dims = [0] * start + list(param.shape.dim) + list(io.input_shapes[0][end:])
    graph.node("Reshape", [io.inputs[0], graph.shape_constant(f"{io.layer.name}/shape", dims)], io.layer.name,
               io.outputs)


def flatten(graph, io):
    """Caffe's Flatten: axes [axis, end_axis] become one; the axes before are copied, those after kept."""
    param = io.layer.flatten_param
    rank = len(io.input_shapes[0])
    start, end = param.axis % rank, param.end_axis % rank
    dims = [0] * start + [-1] + list(io.input_shapes[0][end + 1:])
    graph.node("Reshape", [io.inputs[0], graph.shape_constant(f"{io.layer.name}/shape", dims)], io.layer.name,
               io.outputs)


def crop(graph, io):
    """Caffe's Crop: the first input cut to the second's size from ``axis`` on, at its offsets."""
    param = io.layer.crop_param
    rank = len(io.input_shapes[0])
    axis = param.axis % rank
    offsets = list(param.offset)
    axes = list(range(axis, rank))
    starts = [offsets[0] if len(offsets) == 1 else (offsets[i - axis] if offsets else 0) for i in axes]
    ends = [start + io.input_shapes[1][i] for start, i in zip(starts, axes)]
    _slice(graph, io, io.outputs[0], axes, starts, ends)


def _slice(graph, io, output, axes, starts, ends):
    name = io.layer.name
    graph.node("Slice", [io.inputs[0], graph.shape_constant(f"{name}/starts", starts),
                         graph.shape_constant(f"{name}/ends", ends), graph.shape_constant(f"{name}/axes", axes)],
               name, [output])
