"""Retargeting the head: every layer that states the number of classes, renamed, resized and re-initialised.

Caffe copies pretrained weights by layer name, so a layer whose ``num_output`` changes must also
change its name, or Caffe aborts with "Cannot copy param 0 weights … shape mismatch".

The layers to change are found by following the class axis back from each loss or output of
class scores (Softmax, SoftmaxWithLoss, SSD's MultiBoxLoss and DetectionOutput) through the
layers that keep their input's classes (Crop, Eltwise, Concat, Permute, Flatten, Reshape,
Softmax, ReLU, Dropout, …) and through fixed upsamplers (a Deconvolution with lr_mult 0, or one
grouped per class), down to the layers that compute the scores. A classifier's axis holds one
layer; an FCN's holds its score layers and upsamplers; an SSD's its ``*_mbox_conf`` convolutions,
whose ``num_output`` is priors per location × classes, and the layers stating ``num_classes``.
"""

from dataclasses import dataclass, field

from caffegen.defaults import HEAD_LR_MULT
from caffegen.errors import CaffegenError
from caffegen.net.layers import (
    BIAS_LR_FACTOR,
    CLASS_AXIS_ROOTS,
    NUM_CLASSES_PARAMS,
    bias_blob_index,
    class_axis_bottoms,
    is_frozen,
    learnable_blob_count,
    num_output_param,
    priors_per_location,
)
from caffegen.net.netview import TEST, TRAIN, NetView

# What a layer on a class axis is, which decides how it is retargeted.
SCORE = "score"  # a Convolution or InnerProduct computing one score per class
PRIOR_SCORE = "prior score"  # SSD's mbox_conf: one score per class for each prior box of a location
UPSAMPLER = "upsampler"  # a Deconvolution enlarging the scores class by class
COUNT = "count"  # an SSD layer stating num_classes
RESHAPE = "reshape"  # a Reshape whose shape names the number of classes
RENAMED_ROLES = (SCORE, PRIOR_SCORE, UPSAMPLER)
# The joins where class axes meet: a disagreement between them shows there.
JOIN_TYPES = {"Eltwise", "Concat"}
BACKGROUND = "background"


@dataclass(frozen=True)
class ClassLayer:
    """A layer on a class axis: its role, the number of classes it states, and the join it is reached through."""

    name: str
    role: str
    count: int = None  # None when unknown (a fork's field read without the fork's schema, say)
    via: str = None  # the nearest Eltwise or Concat between it and the root
    priors: int = None  # PRIOR_SCORE: prior boxes per location


@dataclass
class ClassAxis:
    """The class axis of one loss or output: the layers on it that state the number of classes, in net order."""

    root: str
    kind: str  # how the root is named in reports: "loss", "output", "Softmax", …
    layers: list = field(default_factory=list)
    path: set = field(default_factory=set)  # every layer the axis passes through, the root included

    @property
    def names(self):
        return [layer.name for layer in self.layers]

    @property
    def count(self):
        """The number of classes most of its layers state (None when none is known)."""
        counts = [layer.count for layer in self.layers if layer.count is not None]
        return max(counts, key=counts.count) if counts else None

    @property
    def is_classifier(self):
        """Whether one score layer alone makes the classes: a classifier, not a dense head."""
        return len(self.layers) == 1 and self.layers[0].role == SCORE

    def describe(self, layer=None):
        """'class axis of loss 'loss' via fuse_pool4', naming the join through which ``layer`` is reached."""
        via = f" via {layer.via}" if layer is not None and layer.via else ""
        return f"class axis of {self.kind} '{self.root}'{via}"


def find_class_axes(net, path=None):
    """The class axes of ``net`` in both phases; a net without losses of classes is searched from its outputs."""
    views = [NetView(net, phase, path=path) for phase in (TRAIN, TEST)]
    axes = _merge_axes(net, [_walk(view, layer.name, _root_kind(layer)) for view in views for layer in view.layers
                             if layer.type in CLASS_AXIS_ROOTS and layer.bottom])
    if not axes:
        axes = _merge_axes(net, [_walk(view, name, "output") for view in views for name in _output_producers(view)])
    return axes


def find_classifiers(net, path=None):
    """Names of the classifiers: the class axes that one score layer makes on its own."""
    return [axis.layers[0].name for axis in find_class_axes(net, path) if axis.is_classifier]


def classifier_outputs(net, path=None):
    """{classifier name: its num_output} for the classifiers :func:`find_classifiers` finds."""
    return {axis.layers[0].name: axis.layers[0].count for axis in find_class_axes(net, path) if axis.is_classifier}


def _root_kind(layer):
    return "loss" if layer.type.endswith("Loss") else layer.type


def _output_producers(view):
    """The layers writing the net's outputs: blobs that no later layer reads."""
    read_later, producers = set(), []
    for layer in reversed(view.layers):
        if any(top not in read_later for top in layer.top):
            producers.append(layer.name)
        read_later.update(layer.bottom)
    return reversed(producers)


def _walk(view, root, kind):
    """The class axis of layer ``root`` in ``view``: follow the bottoms that carry its classes to the scores."""
    axis = ClassAxis(root, kind)
    detection = view.layer(root).type in NUM_CLASSES_PARAMS
    stack = [(root, None)]
    while stack:
        name, via = stack.pop()
        if name is None or name in axis.path:
            continue
        axis.path.add(name)
        layer = view.layer(name)
        role, carriers = _class_role(layer)
        if role is not None:
            axis.layers.append(_class_layer(view, layer, role, via, detection))
        sources = view.sources(name)
        if len(carriers) > 1 and layer.type in JOIN_TYPES:
            via = name
        stack.extend((sources[i], via) for i in reversed(carriers) if i < len(sources))
    axis.layers = _stated_reshapes(view, axis.layers)
    return axis


def _class_role(layer):
    """(role on a class axis or None, the bottoms through which the classes come) of ``layer``."""
    if layer.type == "Deconvolution" and is_upsampler(layer):
        return UPSAMPLER, (0,)
    if num_output_param(layer) is not None:
        return SCORE, ()
    if layer.type in NUM_CLASSES_PARAMS:
        return COUNT, class_axis_bottoms(layer)
    if layer.type == "Reshape":
        return RESHAPE, (0,)
    return None, class_axis_bottoms(layer)


def is_upsampler(layer):
    """Whether a Deconvolution enlarges each class on its own: fixed (lr_mult 0) or grouped by class."""
    param = layer.convolution_param
    return is_frozen(layer) or param.group == param.num_output > 1


def _class_layer(view, layer, role, via, detection):
    """The :class:`ClassLayer` of ``layer``, with the number of classes it states."""
    if role == COUNT:
        param = getattr(layer, NUM_CLASSES_PARAMS[layer.type], None)
        return ClassLayer(layer.name, role, param.num_classes if param is not None else None, via)
    if role == RESHAPE:
        return ClassLayer(layer.name, role, None, via)
    outputs = num_output_param(layer).num_output
    if role == SCORE and detection:
        priors = _priors_of(view, layer)
        count = outputs // priors if priors and outputs % priors == 0 else None
        return ClassLayer(layer.name, PRIOR_SCORE, count, via, priors)
    return ClassLayer(layer.name, role, outputs, via)


def _priors_of(view, layer):
    """Prior boxes per location of the PriorBox reading the same feature map as SSD confidences ``layer``."""
    feature = view.sources(layer.name)[:1]
    boxes = [other for other in view.layers if other.type == "PriorBox" and other.bottom[:1] == layer.bottom[:1]
             and view.sources(other.name)[:1] == feature]
    if not boxes or "prior_box_param" not in boxes[0].DESCRIPTOR.fields_by_name:
        return None
    return priors_per_location(boxes[0].prior_box_param)


def _stated_reshapes(view, layers):
    """``layers`` with each Reshape kept only where its shape names a number of classes the others state."""
    counts = {layer.count for layer in layers if layer.role != RESHAPE and layer.count is not None}
    kept = []
    for layer in layers:
        stated = counts.intersection(view.layer(layer.name).reshape_param.shape.dim) if layer.role == RESHAPE else None
        if layer.role != RESHAPE:
            kept.append(layer)
        elif stated:
            kept.append(ClassLayer(layer.name, RESHAPE, max(stated), layer.via))
    return kept


def _merge_axes(net, axes):
    """One axis per root over both phases, in net order, without roots that lie on another root's axis."""
    order = {}
    for index, layer in enumerate(net.layer):
        order.setdefault(layer.name, index)
    merged = {}
    for axis in axes:
        known = merged.setdefault(axis.root, ClassAxis(axis.root, axis.kind))
        known.path |= axis.path
        known.layers += [layer for layer in axis.layers if layer.name not in known.names]
    result = []
    for axis in merged.values():
        inner = any(axis.root in other.path for other in merged.values() if other is not axis)
        if axis.layers and not inner:
            axis.layers.sort(key=lambda layer: order[layer.name])
            result.append(axis)
    return result


# --- retargeting ---------------------------------------------------------------------------------


@dataclass
class HeadReport:
    """What retargeting changed: the renamed layers as (old name, new name, old num_output), and a line per change."""

    num_output: int
    renamed: list = field(default_factory=list)
    lines: list = field(default_factory=list)
    label_map: list = None  # SSD: the class names of the new label map, in label order

    def summary(self):
        """One line per retargeted classifier, or per changed layer of a dense head."""
        return list(self.lines)


def retarget_head(net, num_output, layers=None, new_name=None, lr_mult=HEAD_LR_MULT, path=None,
                  label_map_file=None):
    """Retarget every layer stating the number of classes of ``net``, in place, for ``num_output`` classes.

    ``layers`` picks class axes by one of their layers or their loss (a layer on no axis is
    retargeted alone, as named); ``label_map_file`` is where an SSD net's data layers find the new label map.
    """
    if num_output < 1:
        raise CaffegenError(f"--num-output must be at least 1, got {num_output}", path)
    axes = _chosen_axes(net, layers, path)
    _check_one_task(axes, path)
    counting = [layer for layer in net.layer if layer.type in NUM_CLASSES_PARAMS
                and any(layer.name in axis.names for axis in axes)]
    for layer in counting:
        _ssd_param(layer, NUM_CLASSES_PARAMS[layer.type], path)
    new_names = _new_names(net, axes, new_name, path)
    report, done = HeadReport(num_output), set()
    for axis in axes:
        for member in axis.layers:
            if member.name not in done:
                _retarget_member(net, axis, member, new_names.get(member.name), num_output, lr_mult, report, path)
                done.add(member.name)
    if counting:
        report.label_map = _label_names(counting[0], num_output)
        if label_map_file is not None:
            point_to_label_map(net, label_map_file)
    return report


def _chosen_axes(net, names, path):
    """The class axes to retarget: all of them, or those holding (or ending at) the named layers."""
    axes = find_class_axes(net, path)
    if not names:
        if not axes:
            raise CaffegenError("no classifier found: no Softmax, SoftmaxWithLoss or MultiBoxLoss is fed by an "
                                "InnerProduct or Convolution; name it with --layer", path)
        return axes
    chosen = []
    for name in names:
        axis = next((axis for axis in axes if name in axis.path), None)
        axis = axis or ClassAxis(name, "layer", [_named_layer(net, name, path)])
        if axis not in chosen:
            chosen.append(axis)
    return chosen


def _named_layer(net, name, path):
    """A layer named with --layer that lies on no class axis: retargeted on its own, as a classifier."""
    layer = next((layer for layer in net.layer if layer.name == name), None)
    if layer is None:
        raise CaffegenError(f"layer '{name}' not found", path)
    param = num_output_param(layer)
    if param is None:
        raise CaffegenError(f"layer '{name}' ({layer.type}) has no num_output; "
                            "a classifier is an InnerProduct or a Convolution", path)
    return ClassLayer(name, SCORE, param.num_output)


def _check_one_task(axes, path):
    """Refuse class axes of different sizes (two tasks, such as SIFT Flow's semantics and geometry)."""
    sizes = {}
    for axis in axes:
        sizes.setdefault(axis.count, []).append(axis.root)
    sizes.pop(None, None)
    if len(sizes) > 1:
        tasks = "; ".join(f"{', '.join(roots)}: {count} classes" for count, roots in sizes.items())
        raise CaffegenError(f"the net scores {len(sizes)} sets of classes ({tasks}); pick one with --layer, "
                            "naming its loss or a layer on its class axis", path)


def _new_names(net, axes, new_name, path):
    """{old name: new name} of the layers whose weights change shape: '<old>_ft', or --name for a single one."""
    renamed = list(dict.fromkeys(member.name for axis in axes for member in axis.layers
                                 if member.role in RENAMED_ROLES))
    if new_name is not None and len(renamed) > 1:
        what = (f"the net has {len(axes)} classifiers" if all(axis.is_classifier for axis in axes)
                else f"{len(renamed)} layers state the number of classes")
        raise CaffegenError(f"--name gives one name but {what} ({', '.join(renamed)}); each becomes <old>_ft "
                            "without --name, or pick one with --layer", path)
    existing = {layer.name for layer in net.layer}
    new_names = {}
    for old in renamed:
        new = new_name or f"{old}_ft"
        if new in existing:
            raise CaffegenError(f"cannot rename '{old}' to '{new}': a layer of that name exists; "
                                "choose another with --name", path)
        new_names[old] = new
    return new_names


def _retarget_member(net, axis, member, new, num_output, lr_mult, report, path):
    """Retarget every copy (one per phase, say) of class-axis layer ``member``; add its line to ``report``."""
    copies = [layer for layer in net.layer if layer.name == member.name and _plays(layer, member.role)]
    before = num_output_param(copies[0]).num_output if member.role in RENAMED_ROLES else None
    for layer in copies:
        change = _retarget_copy(layer, member, new, num_output, lr_mult, path)
    if new:
        report.renamed.append((member.name, new, before))
    if axis.is_classifier:
        report.lines.append(f"retargeted classifier '{member.name}' ({before} outputs) as '{new}' "
                            f"with {num_output} outputs")
    else:
        renamed = f", renamed '{new}'" if new else ""
        report.lines.append(f"{member.name}: {change}{renamed} ({axis.describe(member)})")


def _plays(layer, role):
    """Whether ``layer`` can play ``role``: of layers that share a name (Caffe allows it), only those change."""
    if role in RENAMED_ROLES:
        return num_output_param(layer) is not None
    return layer.type in NUM_CLASSES_PARAMS if role == COUNT else layer.type == "Reshape"


def _retarget_copy(layer, member, new, num_output, lr_mult, path):
    """Retarget one layer message of ``member`` by its role; returns the change, in words."""
    if member.role == SCORE:
        return f"num_output {retarget_layer(layer, new, num_output, lr_mult, path)} → {num_output}"
    if member.role == PRIOR_SCORE:
        outputs = _prior_outputs(member, num_output, path)
        before = retarget_layer(layer, new, outputs, lr_mult, path)
        return f"num_output {before} → {outputs} ({member.priors} priors × {num_output} classes)"
    if member.role == UPSAMPLER:
        return retarget_upsampler(layer, new, num_output, path)
    if member.role == COUNT:
        return set_num_classes(layer, num_output, path)
    return set_reshape_classes(layer, member.count, num_output)


def _prior_outputs(member, num_output, path):
    if member.priors is None:
        raise CaffegenError(f"cannot tell how many priors '{member.name}' scores at each location: no PriorBox "
                            "reads its input (read SSD nets with --proto and SSD's caffe.proto)", path)
    return member.priors * num_output


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
    param = _ssd_param(layer, NUM_CLASSES_PARAMS[layer.type], path)
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


def _ssd_param(layer, name, path):
    if name not in layer.DESCRIPTOR.fields_by_name:
        raise CaffegenError(f"layer '{layer.name}' is SSD's {layer.type}, which BVLC's schema lacks: read the net "
                            "with --proto and the SSD fork's caffe.proto", path)
    return getattr(layer, name)


def _label_names(layer, num_output):
    """The new classes in label order: 'background' at SSD ``layer``'s background_label_id, class_<label> else."""
    background = getattr(getattr(layer, NUM_CLASSES_PARAMS[layer.type]), "background_label_id", 0)
    return [BACKGROUND if label == background else f"class_{label}" for label in range(num_output)]


def point_to_label_map(net, label_map_file):
    """Make an SSD net's data layers (and saved detections) read the label map at ``label_map_file``."""
    for layer in net.layer:
        if layer.type == "AnnotatedData":
            layer.annotated_data_param.label_map_file = label_map_file
        elif layer.type == "DetectionOutput" and layer.detection_output_param.save_output_param.label_map_file:
            layer.detection_output_param.save_output_param.label_map_file = label_map_file


def drop_unscorable_accuracies(net, num_classes):
    """Remove Accuracy layers whose top_k exceeds ``num_classes`` (Caffe aborts on them); return notes."""
    dropped = [layer for layer in net.layer if layer.type == "Accuracy" and layer.accuracy_param.top_k > num_classes]
    for layer in dropped:
        net.layer.remove(layer)
    return [f"removed '{layer.name}': its top_k {layer.accuracy_param.top_k} exceeds the {num_classes} classes, "
            "on which Caffe aborts" for layer in dropped]
