"""An ONNX graph under construction: nodes, constant tensors and names no two values share."""

from dataclasses import dataclass

from caffegen.io.onnxfile import OnnxNode

BATCH = "N"  # the name of a dynamic batch dimension


class NotExpressible(Exception):
    """A layer whose settings ONNX cannot express: the reason, in words."""


@dataclass
class LayerIO:
    """What a converter needs of one Caffe layer: its message, its values in and out, their shapes, its blobs."""

    layer: object
    inputs: list  # value names of the bottoms
    outputs: list  # value names of the tops
    input_shapes: list
    output_shapes: list
    blobs: list  # the learnable blobs as float32 arrays of the shapes Caffe gives them


class OnnxGraph:
    """The nodes and initializers of one graph, each node named after the Caffe layer it comes from."""

    def __init__(self):
        self.nodes = []
        self.initializers = []
        self._taken = set()

    def unique(self, hint):
        """A value or node name no other one has, made from ``hint``."""
        name, number = hint, 1
        while name in self._taken:
            number += 1
            name = f"{hint}_{number}"
        self._taken.add(name)
        return name

    def reserve(self, names):
        """Mark the values ``names`` (the blobs of the net) as taken, so no made-up name collides with one."""
        self._taken.update(names)

    def constant(self, hint, values, dtype="float32"):
        """The name of a new initializer holding ``values`` (an array, or numbers)."""
        import numpy as np
        name = self.unique(hint)
        self.initializers.append((name, np.asarray(values, dtype=dtype)))
        return name

    def shape_constant(self, hint, dims):
        """The name of a new int64 initializer: the dimensions ``dims`` (for Reshape, Slice, Unsqueeze)."""
        return self.constant(hint, list(dims), "int64")

    def node(self, op, inputs, hint, outputs=None, **attributes):
        """Add an ``op`` node on ``inputs``; return its output's name (``outputs`` given: those names)."""
        names = outputs or [self.unique(f"{hint}/{op}")]
        self.nodes.append(OnnxNode(op, list(inputs), list(names), self.unique(f"{hint}#{op}"), attributes))
        return names[0] if not outputs else names

    def copy(self, source, target, hint):
        """Make value ``target`` equal value ``source``."""
        self.node("Identity", [source], hint, [target])
