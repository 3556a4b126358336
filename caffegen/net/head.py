"""Retargeting the head: every layer that states the number of classes, renamed, resized and re-initialised.

The layers are those on the net's class axes (:mod:`caffegen.net.classaxis`); each is changed by
its role (:mod:`caffegen.net.retarget`), every copy of it, and the change is told in one line.
"""

from dataclasses import dataclass, field

from caffegen.defaults import HEAD_LR_MULT
from caffegen.errors import CaffegenError
from caffegen.net.classaxis import COUNT, PRIOR_SCORE, SCORE, UPSAMPLER, ClassAxis, ClassLayer, find_class_axes
from caffegen.net.layers import NUM_CLASSES_PARAMS, num_output_param
from caffegen.net.retarget import retarget_layer, retarget_upsampler, set_num_classes, set_reshape_classes, ssd_param

RENAMED_ROLES = (SCORE, PRIOR_SCORE, UPSAMPLER)
BACKGROUND = "background"


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
        ssd_param(layer, NUM_CLASSES_PARAMS[layer.type], path)
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
