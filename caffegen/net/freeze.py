"""Freezing: stop the learning of every layer up to a point of the TRAIN-phase data flow.

A frozen layer gets exactly one ``param { lr_mult: 0 decay_mult: 0 }`` per learnable blob.
A frozen BatchNorm also gets ``use_global_stats: true``: with learning rates of zero alone its
running mean and variance keep following each batch, and without the three explicit ``param``
entries Caffe still back-propagates through the whole frozen trunk below it.
"""

from dataclasses import dataclass, field

from caffegen.net.layers import learnable_blob_count
from caffegen.net.netview import TRAIN, NetView


@dataclass
class FreezeReport:
    """What a freeze changed: frozen layers, parameter blobs, shared parameters, unknown layer types."""

    layers: list = field(default_factory=list)
    blobs: int = 0
    global_stats: list = field(default_factory=list)
    shared: dict = field(default_factory=dict)
    unknown: list = field(default_factory=list)

    def summary(self):
        """One line per fact, for the user's terminal."""
        lines = [f"froze {len(self.layers)} layers with learnable parameters ({self.blobs} parameter blobs)"]
        if self.global_stats:
            lines.append(f"set use_global_stats on {len(self.global_stats)} BatchNorm layers")
        for name, users in sorted(self.shared.items()):
            lines.append(f"shared parameter '{name}' is frozen in every layer that uses it: {', '.join(users)}")
        for layer_name, layer_type in self.unknown:
            lines.append(f"left layer '{layer_name}' alone: caffegen does not know the parameters of type {layer_type}")
        return lines


def layers_up_to(view, name):
    """Layer ``name``, everything it depends on, and the in-place layers that directly follow it."""
    return view.ancestors(name) | {name} | set(view.inplace_followers(name))


def layers_before(view, name):
    """Everything layer ``name`` depends on: what stays frozen when training starts at ``name``."""
    return view.ancestors(name)


def freeze(net, upto=None, train_from=None, path=None):
    """Freeze ``net`` in place up to and including layer ``upto``, or before layer ``train_from``."""
    if (upto is None) == (train_from is None):
        raise ValueError("give exactly one of upto= and train_from=")
    view = NetView(net, TRAIN, path=path)
    names = layers_up_to(view, upto) if upto is not None else layers_before(view, train_from)
    report = FreezeReport()
    for layer in net.layer:
        if layer.name in names:
            freeze_layer(layer, report)
    _freeze_shared_params(net, report)
    return report


def freeze_layer(layer, report=None):
    """Give ``layer`` one zero-rate ``param`` per learnable blob; BatchNorm uses its global statistics."""
    report = report if report is not None else FreezeReport()
    count = learnable_blob_count(layer)
    if count is None:
        report.unknown.append((layer.name, layer.type))
        return report
    if count == 0:
        return report
    while len(layer.param) < count:
        layer.param.add()
    for spec in layer.param[:count]:
        spec.lr_mult = 0
        spec.decay_mult = 0
    if layer.type == "BatchNorm":
        layer.batch_norm_param.use_global_stats = True
        report.global_stats.append(layer.name)
    if layer.name not in report.layers:
        report.layers.append(layer.name)
        report.blobs += count
    return report


def _freeze_shared_params(net, report):
    """Caffe aborts when layers sharing a named parameter disagree on its lr_mult: freeze every use."""
    frozen_names = {spec.name for layer in net.layer if layer.name in report.layers
                    for spec in layer.param if spec.name and spec.lr_mult == 0}
    for name in sorted(frozen_names):
        users = []
        for layer in net.layer:
            for spec in layer.param:
                if spec.name == name:
                    spec.lr_mult = 0
                    spec.decay_mult = 0
                    if layer.name not in users:
                        users.append(layer.name)
        if len(users) > 1:
            report.shared[name] = users
