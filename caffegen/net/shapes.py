"""Shape inference in pure Python: every blob and learnable parameter of a net, as Caffe would shape them.

A shape is a tuple of dimensions, a dimension ``None`` when it cannot be known from the net alone
(the image size of an LMDB, say); a whole shape is ``None`` when even its number of axes is
unknown. Each layer follows its Caffe ``Reshape``: convolution arithmetic with dilation, pooling's
ceil rounding and clipping of a last window that starts in the padding, ``Reshape``'s 0 and -1,
and so on. A layer type caffegen does not know leaves its outputs unknown and says so.
"""

import math
from dataclasses import dataclass, field
from difflib import get_close_matches

from caffegen.errors import CaffegenError, did_you_mean
from caffegen.net.layers import (
    AXES_FIXED_TYPES,
    ELEMENTWISE_TYPES,
    LOSS_TYPES,
    MIN_BOTTOMS,
    NO_TOP_TYPES,
    learnable_blob_count,
    priors_per_location,
    unknown_type,
)
from caffegen.net.netview import TEST, TRAIN, NetView

IMAGE_SIZE_HINT = "pass --input-shape N,C,H,W"
MAX_AXES = 32  # Caffe's kMaxBlobAxes
AUTOMATIC_TOP = "(automatic)"


@dataclass
class LayerShapes:
    """What one layer makes: top shapes, learnable blob shapes, forward multiply-adds, and a note."""

    name: str
    type: str
    layer: object  # the LayerParameter; None for the net's deprecated input fields
    tops: dict = field(default_factory=dict)  # blob name -> shape
    params: list = None  # one shape per learnable blob; None when their number is unknown
    multiply_adds: int = 0  # None when unknown
    note: str = None  # why something is unknown, or what Caffe would reject
    rejected: bool = False  # Caffe would refuse to set the layer up


class ShapeError(Exception):
    """A layer that Caffe would refuse to set up with these inputs."""


def infer_shapes(view, input_shape=None):
    """The shapes of every layer of NetView ``view``, in order.

    ``input_shape`` (N, C, H, W) fills the dimensions a data layer cannot know, such as the size
    of the images in its database; what the net itself fixes (batch size, crop, resize) wins.
    The net's deprecated ``input`` fields come first, as the layer Caffe turns them into, 'input'.
    """
    results = [_net_inputs(view.net, input_shape)] if view.net.input else []
    blobs = {blob: shape for result in results for blob, shape in result.tops.items()}
    for layer in view.layers:
        result = infer_layer(layer, [blobs.get(blob) for blob in layer.bottom], input_shape)
        missing = [blob for blob in layer.bottom if blob not in blobs]
        if missing:
            result.rejected = True
            result.note = f"Caffe would reject it: {unknown_bottom(missing[0], blobs)}"
        results.append(result)
        blobs.update(result.tops)
    return results


def unknown_bottom(blob, produced):
    """Caffe's refusal of bottom ``blob``, produced by no earlier layer, with the closest of the ``produced`` blobs."""
    return f"bottom '{blob}' is produced by no earlier layer{likely_blob(blob, produced)}"


def likely_blob(blob, produced):
    """' (did you mean …?)' with the ``produced`` blobs closest to the name ``blob``, or ''."""
    return did_you_mean(get_close_matches(blob, list(produced), n=2, cutoff=0.6))


def check_runs(net, input_shape=None, path=None):
    """Refuse ``net`` when shape inference finds a layer Caffe would reject, in either phase."""
    for phase in (TRAIN, TEST):
        rejected = next((result for result in infer_shapes(NetView(net, phase, path=path), input_shape)
                         if result.rejected), None)
        if rejected is not None:
            raise CaffegenError(f"the prepared {phase} net would not run: layer '{rejected.name}': {rejected.note}",
                                path)


def infer_layer(layer, bottoms, input_shape=None):
    """The shapes of one layer, given the shapes of its bottoms."""
    result = LayerShapes(layer.name, layer.type, layer)
    count = learnable_blob_count(layer)
    result.params = None if count is None else [None] * count
    unknown = unknown_type(layer)
    if unknown:
        result.tops, result.rejected = dict.fromkeys(_top_names(layer)), True
        result.note = f"Caffe would reject it: {unknown}"
        return result
    try:
        tops, params, multiply_adds = _apply_rule(layer, bottoms, input_shape)
    except ShapeError as error:
        tops, params, multiply_adds = [None] * len(_top_names(layer)), None, None
        result.rejected = True
        result.note = f"Caffe would reject it: {error}"
    except _Unknown as unknown:
        tops, params, multiply_adds = [None] * len(_top_names(layer)), None, None
        result.note = unknown.reason
    if params is not None:
        result.params = params
        if len(layer.param) > len(params) and result.note is None:
            result.rejected = True
            result.note = (f"Caffe would reject it: it has {learnable_blobs(len(params))} but {len(layer.param)} "
                           f"param {{}} (\"Too many params specified for layer {layer.name}\")")
    result.tops = dict(zip(_top_names(layer), tops))
    result.multiply_adds = multiply_adds
    if result.note is None:
        result.note = _note_unknown_dims(layer, tops, input_shape)
    return result


def learnable_blobs(count):
    """``count`` learnable blobs, in words."""
    return f"{count} learnable blob" + ("" if count == 1 else "s")


def _top_names(layer):
    """The layer's tops; a loss layer without any gets the one Caffe adds, '(automatic)'."""
    if not layer.top and layer.type in LOSS_TYPES:
        return [AUTOMATIC_TOP]
    return list(layer.top)


class _Unknown(Exception):
    """The shapes cannot be known: ``reason`` says why, or is None when an input's shape is unknown."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


def _apply_rule(layer, bottoms, input_shape):
    """(top shapes, learnable blob shapes or None, multiply-adds) of ``layer``."""
    if layer.type in DATA_RULES:
        return DATA_RULES[layer.type](layer, input_shape), [], 0
    if layer.type in LOSS_TYPES:
        return _loss(layer, bottoms), [], 0
    rule = RULES.get(layer.type)
    if rule is None:
        raise _Unknown(f"caffegen does not know layer type '{layer.type}': its output shapes are unknown")
    needed = MIN_BOTTOMS.get(layer.type, 1)
    if len(bottoms) < needed:
        raise ShapeError(f"{layer.type} needs {needed} bottom blob{'s' * (needed > 1)}, it has {len(bottoms)}")
    if not layer.top and layer.type not in NO_TOP_TYPES:
        raise ShapeError(f"{layer.type} needs a top blob, it has none")
    if any(bottom is None for bottom in bottoms):
        stand_in = _stand_in(layer) if len(bottoms) == 1 else None
        if stand_in is None:
            raise _Unknown(None)
        tops, params, multiply_adds = rule(layer, [stand_in])
        if layer.type not in AXES_FIXED_TYPES:
            tops = [None] * len(tops)  # the stand-in's axes are the layer's guess, not its input's
        return tops, params, multiply_adds
    return rule(layer, bottoms)


def _stand_in(layer):
    """An input of unknown dimensions with the number of axes the layer's own settings imply, or None.

    What the layer itself fixes is then known without its input: a Convolution's weights are
    num_output × ? × kh × kw, an InnerProduct's num_output × ?, and the layers after them learn
    their channel counts.
    """
    if layer.type in ("Convolution", "Deconvolution"):
        param = layer.convolution_param
        explicit = param.HasField("kernel_h") or param.HasField("kernel_w")
        spatial = 2 if explicit or len(param.kernel_size) <= 1 else len(param.kernel_size)
        return _unknown_axes(2 + spatial) if param.axis == 1 else None
    if layer.type == "InnerProduct":
        axis = layer.inner_product_param.axis
        return _unknown_axes(axis + 1) if axis >= 0 else None
    if layer.type in ("BatchNorm", "PReLU", "Embed"):
        return _unknown_axes(2)
    if layer.type in ("Scale", "Bias"):
        param = layer.scale_param if layer.type == "Scale" else layer.bias_param
        return _unknown_axes(param.axis + param.num_axes) if param.axis >= 0 and param.num_axes >= 0 else None
    return None


def _unknown_axes(count):
    """A shape of ``count`` unknown dimensions; more than Caffe's blobs have is refused."""
    if count > MAX_AXES:
        raise ShapeError(f"its settings imply an input of {count} axes; Caffe's blobs have at most {MAX_AXES}")
    return (None,) * count


def _note_unknown_dims(layer, tops, input_shape):
    if layer.type in DATA_RULES and not input_shape and any(unknown(shape) for shape in tops[:1]):
        return f"the size of its data is not in the net; {IMAGE_SIZE_HINT}"
    return None


# --- dimensions ------------------------------------------------------------------------------


def unknown(shape):
    """Whether ``shape`` or one of its dimensions is unknown."""
    return shape is None or None in shape


def product(dims):
    """The product of ``dims``; None when one is unknown."""
    total = 1
    for dim in dims:
        if dim is None:
            return None
        total *= dim
    return total


def _times(*dims):
    return product(dims)


def _axis(axis, rank, what="axis"):
    """Caffe's CanonicalAxisIndex: a negative axis counts from the end."""
    if not -rank <= axis < rank:
        raise ShapeError(f"{what} {axis} is out of range for a {rank}-axis input")
    return axis % rank


def _axis_or_dim(param, legacy, rank):
    """The axis of a Concat or Slice: its deprecated ``concat_dim`` or ``slice_dim`` when set, else its ``axis``."""
    return _axis(getattr(param, legacy), rank, legacy) if param.HasField(legacy) else _axis(param.axis, rank)


def _fill(shape, input_shape):
    """``shape`` with its unknown dimensions taken from the user's --input-shape."""
    if not input_shape:
        return shape
    return tuple(user if dim is None else dim for dim, user in zip(shape, input_shape))


def _merge(shapes, what):
    """One shape from several that must be equal; known dimensions fill unknown ones."""
    ranks = {len(shape) for shape in shapes}
    if len(ranks) > 1:
        raise ShapeError(f"{what} have different numbers of axes: {', '.join(map(format_shape, shapes))}")
    merged = []
    for dims in zip(*shapes):
        known = {dim for dim in dims if dim is not None}
        if len(known) > 1:
            raise ShapeError(f"{what} differ: {', '.join(map(format_shape, shapes))}")
        merged.append(known.pop() if known else None)
    return tuple(merged)


def format_shape(shape):
    """A shape for people: 1×3×224×224, ? for an unknown dimension, 'scalar' for no axes."""
    if shape is None:
        return "?"
    if not shape:
        return "scalar"
    return "×".join("?" if dim is None else str(dim) for dim in shape)


# --- data layers ------------------------------------------------------------------------------


def _batch_and_label(batch, image, layer):
    return [image, (batch,)][:len(layer.top)]


def _crop(layer, deprecated_param):
    return layer.transform_param.crop_size or getattr(layer, deprecated_param).crop_size or None


def _stored_data_layer(param_name):
    """Shapes of a layer reading stored images of unknown size (Data, WindowData): batch and crop only."""
    def shapes(layer, input_shape):
        batch = getattr(layer, param_name).batch_size
        crop = _crop(layer, param_name)
        return _batch_and_label(batch, _fill((batch, None, crop, crop), input_shape), layer)
    return shapes


def _image_data_layer(layer, input_shape):
    param = layer.image_data_param
    height, width = (param.new_height, param.new_width) if param.new_height and param.new_width else (None, None)
    crop = _crop(layer, "image_data_param")
    if crop:
        height = width = crop
    image = (param.batch_size, 3 if param.is_color else 1, height, width)
    return _batch_and_label(param.batch_size, _fill(image, input_shape), layer)


def _memory_data_layer(layer, input_shape):
    param = layer.memory_data_param
    return _batch_and_label(param.batch_size, (param.batch_size, param.channels, param.height, param.width), layer)


def _hdf5_data_layer(layer, input_shape):
    batch = layer.hdf5_data_param.batch_size
    first = (batch,) + tuple(input_shape[1:]) if input_shape else None
    return [first] + [None] * (len(layer.top) - 1)


def _dummy_data_layer(layer, input_shape):
    param = layer.dummy_data_param
    count = len(layer.top)
    legacy = [list(getattr(param, name)) for name in ("num", "channels", "height", "width")]
    if any(legacy):
        if any(len(values) not in (1, count) for values in legacy):
            raise ShapeError("num, channels, height and width need one value, or one per top")
        return [tuple(values[0 if len(values) == 1 else i] for values in legacy) for i in range(count)]
    return _shapes_per_top(param.shape, count, "dummy_data_param")


def _input_layer(layer, input_shape):
    return _shapes_per_top(layer.input_param.shape, len(layer.top), "input_param", input_shape)


def _shapes_per_top(shapes, count, what, input_shape=None):
    """Caffe's rule for Input and DummyData: one shape for every top, or one per top."""
    if not shapes:
        return [tuple(input_shape) if input_shape else None] * count
    if len(shapes) not in (1, count):
        raise ShapeError(f"{what} needs one shape, or one per top ({count}), not {len(shapes)}")
    return [tuple(shapes[0 if len(shapes) == 1 else i].dim) for i in range(count)]


def _net_inputs(net, input_shape):
    """The net's deprecated input / input_shape / input_dim fields, as Caffe's upgrade makes them a layer."""
    result = LayerShapes("input", "Input", None, params=[])
    if net.input_shape:
        shapes = [tuple(shape.dim) for shape in net.input_shape]
    elif net.input_dim:
        dims = list(net.input_dim)
        shapes = [tuple(dims[i:i + 4]) for i in range(0, len(dims), 4)]
    else:
        shapes = []
    if len(shapes) != len(net.input):
        shapes = [tuple(input_shape) if input_shape else None] * len(net.input)
        if not input_shape:
            result.note = f"the net gives no shape for its inputs; {IMAGE_SIZE_HINT}"
    result.tops = dict(zip(net.input, shapes))
    return result


def _annotated_data_layer(layer, input_shape):
    """SSD's AnnotatedData: images of the stored size unless resized (WARP) or cropped; a row of 8 per box."""
    batch = layer.data_param.batch_size
    transform = layer.transform_param
    height = width = transform.crop_size or None
    fields = transform.DESCRIPTOR.fields_by_name
    resize = transform.resize_param if "resize_param" in fields and transform.HasField("resize_param") else None
    if not height and resize is not None and resize.resize_mode == resize.WARP and resize.height and resize.width:
        height, width = resize.height, resize.width
    return [_fill((batch, None, height, width), input_shape), (1, 1, None, 8)][:len(layer.top)]


DATA_RULES = {
    "Data": _stored_data_layer("data_param"), "ImageData": _image_data_layer, "AnnotatedData": _annotated_data_layer,
    "WindowData": _stored_data_layer("window_data_param"),
    "MemoryData": _memory_data_layer, "HDF5Data": _hdf5_data_layer, "DummyData": _dummy_data_layer,
    "Input": _input_layer,
}


# --- vision layers ----------------------------------------------------------------------------


def _spatial_values(param, name, spatial, default):
    """Caffe's per-axis convolution settings: NAME_h/NAME_w, or one value for all axes, or one per axis."""
    repeated = "kernel_size" if name == "kernel" else name
    fields = param.DESCRIPTOR.fields_by_name
    if f"{name}_h" in fields and (param.HasField(f"{name}_h") or param.HasField(f"{name}_w")):
        if spatial != 2:
            raise ShapeError(f"{name}_h and {name}_w need 2 spatial axes, the input has {spatial}")
        return [getattr(param, f"{name}_h"), getattr(param, f"{name}_w")]
    values = list(getattr(param, repeated))
    if not values:
        if default is None:
            raise ShapeError("no kernel_size (or kernel_h and kernel_w)")
        return [default] * spatial
    if len(values) not in (1, spatial):
        raise ShapeError(f"{repeated} has {len(values)} values for {spatial} spatial axes")
    return values * spatial if len(values) == 1 else values


def conv_setup(layer, bottom):
    """(channel axis, kernel, stride, pad, dilation) of a Convolution-style layer on ``bottom``."""
    param = layer.convolution_param
    axis = _axis(param.axis, len(bottom))
    spatial = len(bottom) - axis - 1
    if spatial < 1:
        raise ShapeError(f"a {len(bottom)}-axis input has no spatial axes after axis {axis}")
    kernel = _spatial_values(param, "kernel", spatial, None)
    if 0 in kernel:
        raise ShapeError("a kernel dimension is 0")
    stride = _spatial_values(param, "stride", spatial, 1)
    if 0 in stride:
        raise ShapeError("a stride is 0")
    pad = _spatial_values(param, "pad", spatial, 0)
    dilation = _spatial_values(param, "dilation", spatial, 1)
    return axis, kernel, stride, pad, dilation


def _truncating_division(a, b):
    """C++ integer division, which rounds toward zero."""
    return -(-a // b) if a < 0 else a // b


def _conv_output(size, kernel, stride, pad, dilation, transposed):
    if size is None:
        return None
    extent = dilation * (kernel - 1) + 1
    if transposed:
        return stride * (size - 1) + extent - 2 * pad
    return _truncating_division(size + 2 * pad - extent, stride) + 1


def _convolution(layer, bottoms, transposed=False):
    param = layer.convolution_param
    bottom = bottoms[0]
    axis, kernel, stride, pad, dilation = conv_setup(layer, bottom)
    channels, outputs, group = bottom[axis], param.num_output, param.group
    for what, value in (("input channels", channels), ("num_output", outputs)):
        if value is not None and (group == 0 or value % group):
            raise ShapeError(f"{what} ({value}) is not a multiple of group ({group})")
    spatial = [_conv_output(size, *settings, transposed)
               for size, settings in zip(bottom[axis + 1:], zip(kernel, stride, pad, dilation))]
    if any(size is not None and size <= 0 for size in spatial):
        raise ShapeError(f"the output would be empty ({format_shape(tuple(spatial))}): the input is too small")
    top = tuple(bottom[:axis]) + (outputs,) + tuple(spatial)
    weight_in = None if channels is None else (outputs if transposed else channels) // group
    weight = ((channels if transposed else outputs), weight_in) + tuple(kernel)
    params = [weight, (outputs,)] if _bias_term(param) else [weight]
    per_output = _times(weight_in, product(kernel))
    multiply_adds = _times(product(bottom if transposed else top), per_output)
    return [top] * len(layer.top), params, multiply_adds


def _deconvolution(layer, bottoms):
    return _convolution(layer, bottoms, transposed=True)


def _im2col(layer, bottoms):
    bottom = bottoms[0]
    axis, kernel, stride, pad, dilation = conv_setup(layer, bottom)
    spatial = [_conv_output(size, *settings, False)
               for size, settings in zip(bottom[axis + 1:], zip(kernel, stride, pad, dilation))]
    top = tuple(bottom[:axis]) + (_times(bottom[axis], product(kernel)),) + tuple(spatial)
    return [top], [], 0


def _bias_term(param):
    return param.bias_term if param.HasField("bias_term") else True


def _round_mode_is_ceil(param):
    """Caffe rounds pooled sizes up by default; forks spell FLOOR as ``ceil_mode: false``."""
    if "ceil_mode" in param.DESCRIPTOR.fields_by_name and param.HasField("ceil_mode"):
        return param.ceil_mode
    return param.round_mode == param.CEIL


def _pooled_size(size, kernel, stride, pad, ceil):
    if size is None:
        return None
    rounding = math.ceil if ceil else math.floor
    pooled = int(rounding((size + 2 * pad - kernel) / stride)) + 1
    if pad and (pooled - 1) * stride >= size + pad:
        pooled -= 1  # the last window would start in the padding: Caffe clips it
    return pooled


def _pooling(layer, bottoms):
    param = layer.pooling_param
    bottom = bottoms[0]
    if len(bottom) != 4:
        raise ShapeError(f"Pooling needs a 4-axis input (N, C, H, W), not {format_shape(bottom)}")
    if param.global_pooling:
        return [bottom[:2] + (1, 1)] * len(layer.top), [], 0
    if not param.HasField("kernel_size") and not (param.HasField("kernel_h") and param.HasField("kernel_w")):
        raise ShapeError("no kernel_size (or kernel_h and kernel_w), and not global_pooling")
    kernel = _pool_values(param, "kernel", param.kernel_size)
    stride = _pool_values(param, "stride", param.stride)
    pad = _pool_values(param, "pad", param.pad)
    if 0 in kernel or 0 in stride:
        raise ShapeError(f"kernel {kernel} and stride {stride} must not be 0")
    if any(p >= k for p, k in zip(pad, kernel)):
        raise ShapeError(f"pad {pad} must be smaller than kernel {kernel}")
    ceil = _round_mode_is_ceil(param)
    spatial = tuple(_pooled_size(size, k, s, p, ceil) for size, k, s, p in zip(bottom[2:], kernel, stride, pad))
    if any(size is not None and size <= 0 for size in spatial):
        raise ShapeError(f"the output would be empty ({format_shape(spatial)}): the input is smaller than "
                         f"kernel {kernel}")
    return [bottom[:2] + spatial] * len(layer.top), [], 0


def _pool_values(param, name, single):
    """Caffe's pooling settings: NAME_h and NAME_w, or one value for both axes."""
    if param.HasField(f"{name}_h") or param.HasField(f"{name}_w"):
        return [getattr(param, f"{name}_h"), getattr(param, f"{name}_w")]
    return [single, single]


def _inner_product(layer, bottoms):
    param = layer.inner_product_param
    bottom = bottoms[0]
    axis = _axis(param.axis, len(bottom))
    inputs, outputs = product(bottom[axis:]), param.num_output
    weight = (inputs, outputs) if param.transpose else (outputs, inputs)
    params = [weight, (outputs,)] if _bias_term(param) else [weight]
    return [tuple(bottom[:axis]) + (outputs,)], params, _times(product(bottom[:axis]), inputs, outputs)


def _embed(layer, bottoms):
    param = layer.embed_param
    weight = (param.input_dim, param.num_output)
    params = [weight, (param.num_output,)] if _bias_term(param) else [weight]
    return [tuple(bottoms[0]) + (param.num_output,)], params, 0


# --- layers that keep the shape ---------------------------------------------------------------


def _same_shape(layer, bottoms):
    return [bottoms[0]] * len(layer.top), _elementwise_params(layer, bottoms), 0


def _elementwise_params(layer, bottoms):
    """The learnable blob shapes of the shape-keeping layers that have some."""
    bottom = bottoms[0]
    if layer.type == "BatchNorm":
        channels = bottom[1] if len(bottom) > 1 else 1
        return [(channels,), (channels,), (1,)]
    if layer.type == "PReLU":
        if len(bottom) < 2:
            raise ShapeError("PReLU needs an input with a channel axis")
        return [()] if layer.prelu_param.channel_shared else [(bottom[1],)]
    if layer.type in ("Scale", "Bias"):
        return _scale_params(layer, bottoms)
    return []


def _scale_params(layer, bottoms):
    """Scale and Bias: one blob over axes [axis, axis + num_axes) of the input, unless a second bottom gives it."""
    param = layer.scale_param if layer.type == "Scale" else layer.bias_param
    bottom = bottoms[0]
    axis = _axis(param.axis, len(bottom)) if bottom else 0
    if len(bottoms) > 1:
        factor = bottom[axis:axis + len(bottoms[1])]
        return [factor] if layer.type == "Scale" and param.bias_term else []
    if param.num_axes < -1:
        raise ShapeError("num_axes must be -1 or more")
    factor = bottom[axis:] if param.num_axes == -1 else bottom[axis:axis + param.num_axes]
    if layer.type == "Scale" and param.bias_term:
        return [factor, factor]
    return [factor]


def _eltwise(layer, bottoms):
    return [_merge(bottoms, "Eltwise inputs")] * len(layer.top), [], 0


def _split(layer, bottoms):
    return [bottoms[0]] * len(layer.top), [], 0


# --- layers that rearrange ---------------------------------------------------------------------


def _concat(layer, bottoms):
    param = layer.concat_param
    first = bottoms[0]
    axis = _axis_or_dim(param, "concat_dim", len(first))
    others = [bottom[:axis] + (None,) + bottom[axis + 1:] for bottom in bottoms]
    top = list(_merge(others, "Concat inputs (outside the concat axis)"))
    sizes = [bottom[axis] for bottom in bottoms]
    top[axis] = None if None in sizes else sum(sizes)
    return [tuple(top)], [], 0


def _slice(layer, bottoms):
    param = layer.slice_param
    bottom = bottoms[0]
    axis = _axis_or_dim(param, "slice_dim", len(bottom))
    size, count, points = bottom[axis], len(layer.top), list(param.slice_point)
    if points:
        if len(points) != count - 1:
            raise ShapeError(f"{len(points)} slice points for {count} tops (need {count - 1})")
        bounds = [0] + points + [size]
        sizes = [None if end is None else end - start for start, end in zip(bounds, bounds[1:])]
    elif size is None:
        sizes = [None] * count
    else:
        if size % count:
            raise ShapeError(f"axis {axis} ({size}) does not split evenly into {count} tops")
        sizes = [size // count] * count
    if any(part is not None and part <= 0 for part in sizes):
        raise ShapeError(f"slice points {points} do not fit an axis of {size}")
    return [bottom[:axis] + (part,) + bottom[axis + 1:] for part in sizes], [], 0


def _flatten(layer, bottoms):
    param = layer.flatten_param
    bottom = bottoms[0]
    start, end = _axis(param.axis, len(bottom)), _axis(param.end_axis, len(bottom), "end_axis")
    return [bottom[:start] + (product(bottom[start:end + 1]),) + bottom[end + 1:]], [], 0


def _reshape(layer, bottoms):
    param = layer.reshape_param
    bottom = bottoms[0]
    rank = len(bottom)
    start = param.axis if param.axis >= 0 else rank + param.axis + 1
    end = rank if param.num_axes == -1 else start + param.num_axes
    if not 0 <= start <= end <= rank or param.num_axes < -1:
        raise ShapeError(f"axis {param.axis} and num_axes {param.num_axes} do not fit a {rank}-axis input")
    dims = list(param.shape.dim)
    if dims.count(-1) > 1 or any(dim < -1 for dim in dims):
        raise ShapeError("shape may hold one -1 (inferred) and no other negative dimension")
    new = []
    for i, dim in enumerate(dims):
        if dim == 0 and start + i >= rank:
            raise ShapeError(f"dimension {i} is 0 (copy) but the input has no axis {start + i}")
        new.append(bottom[start + i] if dim == 0 else (None if dim == -1 else dim))
    top = list(bottom[:start]) + new + list(bottom[end:])
    total = product(bottom)
    if -1 in dims:
        index = start + dims.index(-1)
        rest = product(top[:index] + top[index + 1:])
        if total is not None and rest:
            if total % rest:
                raise ShapeError(f"{total} values do not reshape into {format_shape(tuple(top))}")
            top[index] = total // rest
    elif total is not None and product(top) is not None and product(top) != total:
        raise ShapeError(f"{total} values do not reshape into {format_shape(tuple(top))}")
    return [tuple(top)], [], 0


def _crop_layer(layer, bottoms):
    param = layer.crop_param
    bottom, reference = bottoms[:2]
    if len(bottom) != len(reference):
        raise ShapeError(f"Crop inputs have different numbers of axes: {format_shape(bottom)}, "
                         f"{format_shape(reference)}")
    axis = _axis(param.axis, len(bottom))
    offsets = list(param.offset)
    if len(offsets) not in (0, 1, len(bottom) - axis):
        raise ShapeError(f"{len(offsets)} offsets for {len(bottom) - axis} cropped axes")
    top = bottom[:axis] + reference[axis:]
    for i in range(axis, len(bottom)):
        offset = offsets[0] if len(offsets) == 1 else (offsets[i - axis] if offsets else 0)
        if bottom[i] is not None and reference[i] is not None and bottom[i] - offset < reference[i]:
            raise ShapeError(f"axis {i}: cropping {reference[i]} at offset {offset} does not fit {bottom[i]}")
    return [top], [], 0


def _tile(layer, bottoms):
    param = layer.tile_param
    bottom = bottoms[0]
    axis = _axis(param.axis, len(bottom))
    return [bottom[:axis] + (_times(bottom[axis], param.tiles),) + bottom[axis + 1:]], [], 0


def _batch_reindex(layer, bottoms):
    return [bottoms[1][:1] + bottoms[0][1:]], [], 0


def _parameter(layer, bottoms):
    shape = tuple(layer.parameter_param.shape.dim)
    return [shape], [shape], 0


# --- outputs ------------------------------------------------------------------------------------


def _loss(layer, bottoms):
    """A scalar loss; a second top (SoftmaxWithLoss's probabilities) has the scores' shape."""
    return [()] + [bottoms[0] if bottoms else None] * (len(layer.top) - 1)


def _accuracy(layer, bottoms):
    bottom = bottoms[0]
    tops = [()]
    if len(layer.top) > 1:
        tops.append((bottom[_axis(layer.accuracy_param.axis, len(bottom))],))
    return tops, [], 0


def _argmax(layer, bottoms):
    param = layer.argmax_param
    bottom = bottoms[0]
    if param.HasField("axis"):
        axis = _axis(param.axis, len(bottom))
        top = bottom[:axis] + (param.top_k,) + bottom[axis + 1:]
    else:
        top = [1] * max(3, len(bottom))
        top[0], top[2] = bottom[_axis(0, len(bottom))], param.top_k
        if param.out_max_val:
            top[1] = 2
        top = tuple(top)
    return [top], [], 0


def _reduction(layer, bottoms):
    bottom = bottoms[0]
    return [bottom[:_axis(layer.reduction_param.axis, len(bottom))]], [], 0


def _silence(layer, bottoms):
    return [], [], 0


# --- SSD's layers (weiliu89/caffe, branch ssd), read with that fork's schema -----------------------


def _fork_param(message, name):
    """``message``'s field ``name``, which only a fork's schema has; unknown shapes without it."""
    if name not in message.DESCRIPTOR.fields_by_name:
        raise _Unknown(f"'{name}' is not in this schema: read the net with --proto and the fork's caffe.proto")
    return getattr(message, name)


def _permute(layer, bottoms):
    bottom = bottoms[0]
    order = list(_fork_param(layer, "permute_param").order)
    if any(axis >= len(bottom) for axis in order) or len(set(order)) != len(order):
        raise ShapeError(f"order {order} is not a permutation of the axes of {format_shape(bottom)}")
    order += [axis for axis in range(len(bottom)) if axis not in order]
    return [tuple(bottom[axis] for axis in order)], [], 0


def _prior_box(layer, bottoms):
    """1 × 2 (boxes, variances) × 4 coordinates of each prior at each location of the feature map."""
    param = _fork_param(layer, "prior_box_param")
    feature = bottoms[0]
    if len(feature) != 4:
        raise ShapeError(f"PriorBox needs a 4-axis feature map, not {format_shape(feature)}")
    if not param.min_size:
        raise ShapeError("no min_size")
    if param.max_size and len(param.max_size) != len(param.min_size):
        raise ShapeError(f"{len(param.max_size)} max_size for {len(param.min_size)} min_size")
    return [(1, 2, _times(feature[2], feature[3], priors_per_location(param), 4))], [], 0


def _normalize(layer, bottoms):
    bottom = bottoms[0]
    if len(bottom) < 2:
        raise ShapeError(f"Normalize needs an input with a channel axis, not {format_shape(bottom)}")
    shared = _fork_param(layer, "norm_param").channel_shared
    return [bottom] * len(layer.top), [() if shared else (bottom[1],)], 0


def _check_detection_inputs(layer, bottoms, param):
    """SSD's check: locations are priors × 4 (per class without share_location), confidences priors × classes."""
    if not param.HasField("num_classes"):
        raise ShapeError("no num_classes")
    locations, confidences, priors = bottoms[:3]
    if len(priors) != 3 or len(locations) < 2 or len(confidences) < 2:
        raise ShapeError("expected locations and confidences of 2 axes or more and priors of 3 (1 × 2 × 4·priors)")
    num_priors = None if priors[2] is None else priors[2] // 4
    location_classes = 1 if param.share_location else param.num_classes
    for blob, what, per_prior in ((0, "locations", location_classes * 4), (1, "confidences", param.num_classes)):
        expected, channels = _times(num_priors, per_prior), bottoms[blob][1]
        if None not in (expected, channels) and expected != channels:
            raise ShapeError(f"its {what} '{layer.bottom[blob]}' have {channels} values an image, but "
                             f"{num_priors} priors × {per_prior} make {expected}")
    if None not in (locations[0], confidences[0]) and locations[0] != confidences[0]:
        raise ShapeError(f"locations and confidences have batch sizes {locations[0]} and {confidences[0]}")


def _multibox_loss(layer, bottoms):
    _check_detection_inputs(layer, bottoms, _fork_param(layer, "multibox_loss_param"))
    return [()] * len(layer.top), [], 0


def _detection_output(layer, bottoms):
    _check_detection_inputs(layer, bottoms, _fork_param(layer, "detection_output_param"))
    return [(1, 1, 1, 7)] * len(layer.top), [], 0


def _detection_evaluate(layer, bottoms):
    _fork_param(layer, "detection_evaluate_param")
    return [(1, 1, None, 5)] * len(layer.top), [], 0


RULES = {
    "Convolution": _convolution, "Deconvolution": _deconvolution, "Im2col": _im2col, "Pooling": _pooling,
    "InnerProduct": _inner_product, "Embed": _embed, "Eltwise": _eltwise, "Split": _split,
    "Concat": _concat, "Slice": _slice, "Flatten": _flatten, "Reshape": _reshape, "Crop": _crop_layer,
    "Tile": _tile, "BatchReindex": _batch_reindex, "Parameter": _parameter, "Accuracy": _accuracy,
    "ArgMax": _argmax, "Reduction": _reduction, "Silence": _silence,
    "Permute": _permute, "PriorBox": _prior_box, "Normalize": _normalize, "MultiBoxLoss": _multibox_loss,
    "DetectionOutput": _detection_output, "DetectionEvaluate": _detection_evaluate,
}
RULES.update({layer_type: _same_shape for layer_type in ELEMENTWISE_TYPES})
