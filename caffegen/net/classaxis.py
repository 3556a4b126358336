"""The class axes of a net: every layer that states the number of classes, found by following the classes back.

The layers are found by following the class axis back from each loss or output of class scores
(Softmax, SoftmaxWithLoss, SSD's MultiBoxLoss and DetectionOutput) through the layers that keep
their input's classes (Crop, Eltwise, Concat, Permute, Flatten, Reshape, Softmax, ReLU, Dropout,
…) and through fixed upsamplers (a Deconvolution with lr_mult 0, or one grouped per class), down
to the layers that compute the scores. A classifier's axis holds one layer; an FCN's holds its
score layers and upsamplers; an SSD's its ``*_mbox_conf`` convolutions, whose ``num_output`` is
priors per location × classes, and the layers stating ``num_classes``.
"""

from dataclasses import dataclass, field

from caffegen.net.layers import (
    CLASS_AXIS_ROOTS,
    NUM_CLASSES_PARAMS,
    class_axis_bottoms,
    is_frozen,
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
# The joins where class axes meet: a disagreement between them shows there.
JOIN_TYPES = {"Eltwise", "Concat"}


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
