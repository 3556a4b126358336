"""Retargeting the classifier: a renamed, resized, freshly initialised final layer.

Caffe copies pretrained weights by layer name, so a classifier whose ``num_output`` changes
must also change its name, or Caffe aborts with "Cannot copy param 0 weights … shape mismatch".
"""

from dataclasses import dataclass, field

from caffegen.defaults import HEAD_LR_MULT
from caffegen.errors import CaffegenError
from caffegen.net.layers import (
    BIAS_LR_FACTOR,
    PASSTHROUGH_TYPES,
    SOFTMAX_TYPES,
    bias_blob_index,
    learnable_blob_count,
    num_output_param,
)
from caffegen.net.netview import TEST, TRAIN, NetView


@dataclass
class HeadReport:
    """The classifiers that were retargeted, as (old name, new name, old num_output) triples."""

    num_output: int
    renamed: list = field(default_factory=list)

    def summary(self):
        """One line per retargeted classifier."""
        return [f"retargeted classifier '{old}' ({before} outputs) as '{new}' with {self.num_output} outputs"
                for old, new, before in self.renamed]


def find_classifiers(net, path=None):
    """Names of the layers that produce class scores.

    Walks back from each Softmax/SoftmaxWithLoss; a net without one (a deploy net ending in its
    scores) is searched from its output blobs instead.
    """
    views = [NetView(net, phase, path=path) for phase in (TRAIN, TEST)]
    found = _unique(_scoring_layer(view, layer.name) for view in views for layer in view.layers
                    if layer.type in SOFTMAX_TYPES and layer.bottom)
    if not found:
        found = _unique(_scoring_layer(view, producer, include_self=True) for view in views
                        for producer in _output_producers(view))
    return found


def classifier_outputs(net, path=None):
    """{classifier name: its num_output} for the classifiers :func:`find_classifiers` finds."""
    layers = {layer.name: layer for layer in net.layer}
    return {name: num_output_param(layers[name]).num_output for name in find_classifiers(net, path)}


def _unique(names):
    found = []
    for name in names:
        if name is not None and name not in found:
            found.append(name)
    return found


def _output_producers(view):
    """The layers writing the net's outputs: blobs that no later layer reads."""
    read_later, producers = set(), []
    for layer in reversed(view.layers):
        if any(top not in read_later for top in layer.top):
            producers.append(layer.name)
        read_later.update(layer.bottom)
    return reversed(producers)


def _scoring_layer(view, name, include_self=False):
    """The first layer with a ``num_output`` behind layer ``name``'s input (or at it), through parameter-free layers."""
    current = name if include_self else view.sources(name)[0]
    while current is not None:
        layer = view.layer(current)
        if num_output_param(layer) is not None:
            return current
        if layer.type not in PASSTHROUGH_TYPES or not layer.bottom:
            return None
        current = view.sources(current)[0]
    return None


def retarget_head(net, num_output, layers=None, new_name=None, lr_mult=HEAD_LR_MULT, path=None):
    """Rename, resize and re-initialise the classifier(s) of ``net`` in place for ``num_output`` classes."""
    if num_output < 1:
        raise CaffegenError(f"--num-output must be at least 1, got {num_output}", path)
    layers = list(layers) if layers else find_classifiers(net, path)
    if not layers:
        raise CaffegenError("no classifier found: no Softmax or SoftmaxWithLoss is fed by an InnerProduct "
                            "or Convolution; name it with --layer", path)
    if new_name is not None and len(layers) > 1:
        raise CaffegenError(f"--name gives one name but the net has {len(layers)} classifiers "
                            f"({', '.join(layers)}); use --layer to pick one", path)
    existing = {layer.name for layer in net.layer}
    report = HeadReport(num_output)
    for old in layers:
        new = new_name or f"{old}_ft"
        if new in existing:
            raise CaffegenError(f"cannot rename '{old}' to '{new}': a layer of that name exists; "
                                "choose another with --name", path)
        matches = [layer for layer in net.layer if layer.name == old]
        if not matches:
            raise CaffegenError(f"layer '{old}' not found", path)
        before = None
        for layer in matches:
            before = retarget_layer(layer, new, num_output, lr_mult, path)
        report.renamed.append((old, new, before))
    return report


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
    blobs = learnable_blob_count(layer)
    if blobs > 1 and not param.HasField("bias_filler"):
        param.bias_filler.type = "constant"
        param.bias_filler.value = 0
    while len(layer.param) < blobs:
        layer.param.add()
    for i, spec in enumerate(layer.param[:blobs]):
        spec.lr_mult = lr_mult * (BIAS_LR_FACTOR if i == bias_blob_index(layer) else 1)
        spec.decay_mult = 0 if i == bias_blob_index(layer) else 1
    return before


def drop_unscorable_accuracies(net, num_classes):
    """Remove Accuracy layers whose top_k exceeds ``num_classes`` (Caffe aborts on them); return notes."""
    dropped = [layer for layer in net.layer if layer.type == "Accuracy" and layer.accuracy_param.top_k > num_classes]
    for layer in dropped:
        net.layer.remove(layer)
    return [f"removed '{layer.name}': its top_k {layer.accuracy_param.top_k} exceeds the {num_classes} classes, "
            "on which Caffe aborts" for layer in dropped]
