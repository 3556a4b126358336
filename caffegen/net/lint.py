"""Static checks for the classic fine-tuning traps, one finding per problem with its fix."""

from dataclasses import dataclass

from caffegen.errors import CaffegenError
from caffegen.io.lists import read_list
from caffegen.net.classaxis import classifier_outputs, find_class_axes
from caffegen.net.layers import is_frozen, learnable_blob_count, unknown_type
from caffegen.net.netview import TEST, TRAIN, NetView
from caffegen.net.shapes import likely_blob


@dataclass(frozen=True)
class Finding:
    """One problem of one layer: what is wrong and how to fix it."""

    layer: str
    problem: str
    fix: str

    def format(self, path):
        return f"{path}: layer '{self.layer}': {self.problem}; fix: {self.fix}"


def lint(net, num_classes=None, path=None):
    """All findings for ``net`` in both phases, in layer order, without duplicates."""
    findings = []
    for phase in (TRAIN, TEST):
        view = NetView(net, phase, path=path)
        checks = [check_layer_types(view), check_trainable_scale_after_frozen_batchnorm(view),
                  check_decay_without_learning(view), check_unproduced_bottoms(view)]
        if phase == TRAIN:
            checks.append(check_drifting_batchnorm(view))
        if num_classes is not None:
            checks.append(check_classifier_size(net, num_classes, path))
        if phase == TRAIN:
            checks.append(check_class_axes(net, path))
        for finding in (f for check in checks for f in check):
            if finding not in findings:
                findings.append(finding)
    return findings


def check_drifting_batchnorm(view):
    """A BatchNorm fed only by frozen layers that still computes batch statistics while training."""
    for layer in view.layers:
        if layer.type != "BatchNorm" or layer.batch_norm_param.use_global_stats:
            continue
        if behind_frozen_layers(view, layer.name):
            yield Finding(layer.name,
                          "BatchNorm sits behind frozen layers but still uses batch statistics, so its "
                          "mean/variance keep drifting although nothing below it learns",
                          "set batch_norm_param { use_global_stats: true } and three param "
                          "{ lr_mult: 0 decay_mult: 0 } (caffegen freeze does both)")


def check_trainable_scale_after_frozen_batchnorm(view):
    """A Scale that still learns right after a BatchNorm in the frozen part of the net."""
    for layer in view.layers:
        if layer.type != "Scale" or is_frozen(layer):
            continue
        sources = [view.layer(name) for name in view.sources(layer.name)[:1] if name is not None]
        if sources and sources[0].type == "BatchNorm" and behind_frozen_layers(view, sources[0].name):
            yield Finding(layer.name,
                          f"Scale still learns right after the frozen BatchNorm '{sources[0].name}'",
                          "freeze it too (param { lr_mult: 0 decay_mult: 0 } per blob) or unfreeze the BatchNorm")


def behind_frozen_layers(view, name):
    """Whether every layer that layer ``name`` depends on and that learns by gradient is frozen.

    BatchNorm does not count: its statistics are not learned by gradient.
    """
    ancestors = [view.layer(ancestor) for ancestor in view.ancestors(name)]
    learnable = [a for a in ancestors if a.type != "BatchNorm" and learnable_blob_count(a)]
    return bool(learnable) and all(is_frozen(ancestor) for ancestor in learnable)


def check_decay_without_learning(view):
    """``lr_mult: 0`` with a non-zero ``decay_mult`` (Caffe's decay_mult defaults to 1)."""
    for layer in view.layers:
        for i, spec in enumerate(layer.param):
            if spec.lr_mult == 0 and spec.decay_mult != 0:
                yield Finding(layer.name, f"param {i} has lr_mult 0 but decay_mult {spec.decay_mult:g} "
                              "(decay_mult defaults to 1)", "add decay_mult: 0 to that param")


def check_layer_types(view):
    """A layer whose type no Caffe registers: a typo, usually."""
    for layer in view.layers:
        problem = unknown_type(layer)
        if problem:
            yield Finding(layer.name, problem, "fix the type name (the types are Caffe's layer class names)")


def check_unproduced_bottoms(view):
    """A bottom blob that no layer writes, or that is written only after the layer that reads it.

    A blob written only by layers of another phase or stage is left to that phase's check.
    """
    for layer_name, blob in view.unproduced_bottoms():
        position = view.index(layer_name)
        if any(blob in later.top for later in view.layers[position + 1:]):
            yield Finding(layer_name, f"bottom '{blob}' is produced only by a later layer in the {view.phase} phase",
                          "move this layer after the one that produces the blob")
        elif not any(blob in layer.top for layer in view.net.layer):
            produced = [top for earlier in view.layers[:position] for top in earlier.top] + list(view.net.input)
            yield Finding(layer_name, f"bottom '{blob}' is produced by no layer and is no net input"
                                      f"{likely_blob(blob, produced)}",
                          "fix the blob name, or add the layer that produces it")


def check_classifier_size(net, num_classes, path):
    """A classifier whose ``num_output`` differs from the number of classes of the labels."""
    for name, outputs in classifier_outputs(net, path).items():
        if outputs != num_classes:
            yield Finding(name, f"classifier has num_output {outputs} but the labels have {num_classes} classes",
                          f"caffegen head --num-output {num_classes} (renames it so Caffe initialises it fresh)")


def check_class_axes(net, path):
    """A layer stating another number of classes than the rest of its class axis (retargeted alone, or left out).

    The majority of the axis's layers is taken as right, so a layer retargeted on its own is named,
    and so is one left at the old size when most were retargeted.
    """
    for axis in find_class_axes(net, path):
        count = axis.count
        for layer in axis.layers:
            if layer.count is None and layer.priors:
                yield Finding(layer.name, f"its num_output is no multiple of its {layer.priors} priors a location, so "
                              f"its classes disagree with the {count} of the {axis.describe()}",
                              "caffegen head --num-output N (it sets priors × N)")
            elif layer.count is not None and layer.count != count:
                yield Finding(layer.name, f"states {layer.count} classes but the rest of the {axis.describe()} "
                              f"states {count}, so they disagree at '{layer.via or axis.root}'",
                              f"retarget them together: caffegen head --num-output N "
                              f"(it changes every layer of the axis: {', '.join(axis.names)})")


def count_classes(path):
    """Number of classes in a label file: a Caffe list (``path label`` lines: max label + 1) or one name per line."""
    lines = read_list(path, "label")
    if not lines:
        raise CaffegenError("empty label file", path)
    if all(line.path and line.label_number is not None for line in lines):
        return max(line.label_number for line in lines) + 1
    return len(lines)

