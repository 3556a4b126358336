"""Random weights for a net, written with caffegen's own caffemodel writer, that keep activations of the order of 1."""

import numpy as np

from caffegen.io.caffemodel import write_caffemodel
from caffegen.io.schema import BVLC
from caffegen.net.netview import TEST, NetView
from caffegen.net.shapes import infer_shapes


def layer_arrays(layer_type, shapes, rng):
    """Random blobs of one layer: He-scaled filters, BatchNorm with positive variances and a moving-average
    factor of 2 (so that dividing by it matters), Scale near 1, PReLU slopes in [0, 0.5)."""
    if layer_type == "BatchNorm":
        return [rng.normal(0, 0.2, shapes[0]) * 2, rng.uniform(0.5, 2.0, shapes[1]) * 2, np.full(shapes[2], 2.0)]
    if layer_type in ("Scale", "Bias"):
        return [rng.uniform(0.8, 1.2, shape) if i == 0 and layer_type == "Scale" else rng.normal(0, 0.1, shape)
                for i, shape in enumerate(shapes)]
    if layer_type == "PReLU":
        return [rng.uniform(0, 0.5, shapes[0])]
    fan_in = int(np.prod(shapes[0][1:])) or 1
    if layer_type == "InnerProduct" and len(shapes[0]) == 2:
        fan_in = max(shapes[0])
    weight = rng.standard_normal(shapes[0], dtype=np.float32) * np.float32(np.sqrt(2 / fan_in))
    return [weight] + [rng.normal(0, 0.1, shape) for shape in shapes[1:]]


def write_random_weights(net, path, seed=0):
    """Write random weights for every layer of ``net`` (its TEST phase) with learnable blobs to ``path``."""
    rng = np.random.default_rng(seed)
    layers = []
    for result in infer_shapes(NetView(net, TEST)):
        if result.params:
            arrays = layer_arrays(result.type, [tuple(shape) for shape in result.params], rng)
            layers.append((BVLC.LayerParameter(name=result.name, type=result.type),
                           [np.asarray(array, np.float32) for array in arrays]))
    write_caffemodel(path, layers)
    return path
