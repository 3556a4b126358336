"""One layer of the head made fit for a new number of classes: a classifier, an upsampler, an SSD count, a Reshape.

Caffe copies pretrained weights by layer name, so a layer whose ``num_output`` changes must also
change its name, or Caffe aborts with "Cannot copy param 0 weights … shape mismatch".
"""

from caffegen.defaults import HEAD_LR_MULT
from caffegen.errors import CaffegenError
from caffegen.net.layers import (
    BIAS_LR_FACTOR,
    NUM_CLASSES_PARAMS,
    bias_blob_index,
    is_frozen,
    learnable_blob_count,
    num_output_param,
)


def retarget_layer(layer, new_name, num_output, lr_mult=HEAD_LR_MULT, path=None):
    """Make ``layer`` a fresh classifier: new name and size, fillers, boosted learning rate.

    Returns the layer's previous ``num_output``.
    """
    param = num_output_param(layer)
    if param is None:
        raise CaffegenError(f"layer '{layer.name}' ({layer.type}) has no num_output; "
                            "a classifier is an InnerProduct or a Convolution", path)
    before = param.num_output
    layer.name = new_name
    param.num_output = num_output
    if not param.HasField("weight_filler"):
        param.weight_filler.type = "gaussian"
        param.weight_filler.std = 0.01
    _add_bias_filler(layer, param)
    for i, spec in enumerate(_param_specs(layer)):
        spec.lr_mult = lr_mult * (BIAS_LR_FACTOR if i == bias_blob_index(layer) else 1)
        spec.decay_mult = 0 if i == bias_blob_index(layer) else 1
    return before


def retarget_upsampler(layer, new_name, num_output, path=None):
    """Resize a per-class Deconvolution for ``num_output`` classes; a fixed one gets bilinear weights and keeps lr 0.

    Its group becomes the class count where it was the old class count, and where it was 1 in a fixed
    upsampler: Caffe's bilinear filler fills every pair of input and output channels, so only a grouped
    Deconvolution upsamples each class on its own (FCN's surgery filled only those pairs by hand).
    Returns the change, in words.
    """
    param = layer.convolution_param
    before, group, fixed = param.num_output, param.group, is_frozen(layer)
    new_group = num_output if group == before or (fixed and group == 1) else group
    if num_output % new_group:
        raise CaffegenError(f"layer '{layer.name}': {num_output} classes do not split into its {group} groups", path)
    if fixed and len(set(_kernel(param))) > 1:
        raise CaffegenError(f"layer '{layer.name}': Caffe's bilinear filler fills square kernels only, not "
                            f"{'×'.join(map(str, _kernel(param)))}; set this upsampler's weights yourself", path)
    layer.name = new_name
    param.num_output, param.group = num_output, new_group
    if fixed or not param.HasField("weight_filler"):
        param.weight_filler.Clear()
        param.weight_filler.type = "bilinear"
    _add_bias_filler(layer, param)
    if fixed:
        for spec in _param_specs(layer):
            spec.lr_mult, spec.decay_mult = 0, 0
    weights = "bilinear weights, lr_mult 0" if fixed else "its own learning rate"
    return f"num_output {before} → {num_output}, group {group} → {new_group}, {weights}"


def _kernel(param):
    """A convolution's kernel sizes: kernel_h and kernel_w, or its kernel_size values."""
    if param.HasField("kernel_h") or param.HasField("kernel_w"):
        return [param.kernel_h, param.kernel_w]
    return list(param.kernel_size)


def _add_bias_filler(layer, param):
    if learnable_blob_count(layer) > 1 and not param.HasField("bias_filler"):
        param.bias_filler.type = "constant"
        param.bias_filler.value = 0


def _param_specs(layer):
    """The layer's ``param`` entries, one per learnable blob (missing ones added)."""
    blobs = learnable_blob_count(layer)
    while len(layer.param) < blobs:
        layer.param.add()
    return layer.param[:blobs]


def set_num_classes(layer, num_output, path=None):
    """Set an SSD layer's ``num_classes``; returns the change, in words."""
    param = ssd_param(layer, NUM_CLASSES_PARAMS[layer.type], path)
    background = getattr(param, "background_label_id", 0)
    if background >= num_output:
        raise CaffegenError(f"layer '{layer.name}': background_label_id {background} needs more than "
                            f"{num_output} classes (SSD counts the background as a class)", path)
    before, param.num_classes = param.num_classes, num_output
    return f"num_classes {before} → {num_output}"


def set_reshape_classes(layer, before, num_output):
    """Set the dimensions of a Reshape that name ``before`` classes to ``num_output``; returns the change."""
    dims = layer.reshape_param.shape.dim
    axes = [i for i, dim in enumerate(dims) if dim == before]
    for i in axes:
        dims[i] = num_output
    return f"shape dim {', '.join(map(str, axes))}: {before} → {num_output}"


def ssd_param(layer, name, path):
    """The fork parameter message ``name`` of SSD ``layer``; refused when the net was read without SSD's schema."""
    if name not in layer.DESCRIPTOR.fields_by_name:
        raise CaffegenError(f"layer '{layer.name}' is SSD's {layer.type}, which BVLC's schema lacks: read the net "
                            "with --proto and the SSD fork's caffe.proto", path)
    return getattr(layer, name)



def drop_unscorable_accuracies(net, num_classes):
    """Remove Accuracy layers whose top_k exceeds ``num_classes`` (Caffe aborts on them); return notes."""
    dropped = [layer for layer in net.layer if layer.type == "Accuracy" and layer.accuracy_param.top_k > num_classes]
    for layer in dropped:
        net.layer.remove(layer)
    return [f"removed '{layer.name}': its top_k {layer.accuracy_param.top_k} exceeds the {num_classes} classes, "
            "on which Caffe aborts" for layer in dropped]
