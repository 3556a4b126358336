"""BatchNorm (and the Scale after it) folded into the Convolution or InnerProduct before it.

At test time a BatchNorm is an affine map per channel, (x - mean) / sqrt(var + eps), and a Scale
after it another one, gamma · x + beta; both fold into the weights and bias of the layer that
computes x. The net is in single assignment (``net/singleassign.py``), so a value that another
layer also reads is seen: such a BatchNorm is left as it is.
"""

from dataclasses import dataclass, field

from caffegen.net.netview import TEST, NetView
from caffegen.net.shapes import infer_shapes

FOLDABLE = {"Convolution": "convolution_param", "InnerProduct": "inner_product_param"}


@dataclass
class Folding:
    """The folded net, its weights as (LayerParameter, arrays) pairs, and which BatchNorms were folded or kept."""

    net: object
    weights: list
    folded: list = field(default_factory=list)  # names of the BatchNorm layers folded
    kept: list = field(default_factory=list)  # (BatchNorm name, why it stays)


def fold_batch_norms(net, caffemodel):
    """The Folding of ``net`` (single assignment, TEST layers only) with the weights of Caffemodel ``caffemodel``."""
    view = NetView(net, TEST)
    params = {result.name: result.params for result in infer_shapes(view)}
    arrays = {layer.name: _values(caffemodel, layer.name, params[layer.name]) for layer in view.layers
              if params.get(layer.name)}
    folding = Folding(_copy(net), [])
    removed = set()
    for layer in view.layers:
        if layer.type == "BatchNorm":
            chain = _chain(view, layer, folding)
            if chain is not None:
                _fold(folding.net, arrays, *chain)
                removed.update(other.name for other in chain[1:] if other is not None)
                folding.folded.append(layer.name)
    kept = [layer for layer in folding.net.layer if layer.name not in removed]
    del folding.net.layer[:]
    folding.net.layer.extend(kept)
    folding.weights = [(type(layer)(name=layer.name, type=layer.type), arrays[layer.name])
                       for layer in kept if layer.name in arrays]
    return folding


def _chain(view, norm, folding):
    """(producer, BatchNorm, Scale or None) when ``norm`` can be folded, else None (noted in ``folding.kept``)."""
    source = view.sources(norm.name)[0]
    producer = view.layer(source) if source is not None else None
    if producer is None or producer.type not in FOLDABLE or len(producer.top) != 1:
        folding.kept.append((norm.name, "not after a Convolution or InnerProduct"))
        return None
    if view.consumers(norm.bottom[0]) != [norm.name]:
        folding.kept.append((norm.name, f"'{producer.name}' is read by other layers too"))
        return None
    if producer.type == "Convolution" and producer.convolution_param.axis % 4 != 1:
        folding.kept.append((norm.name, "its convolution's channel axis is not 1"))
        return None
    readers = [view.layer(name) for name in view.consumers(norm.top[0])]
    after = readers[0] if len(readers) == 1 else None
    if after is None or after.type != "Scale" or len(after.bottom) != 1 or after.scale_param.num_axes != 1 \
            or after.scale_param.axis != 1:
        after = None
    return producer, norm, after


def _fold(net, arrays, producer, norm, after):
    """Fold ``norm`` (and ``after``) into ``producer``: new weights and bias, and the last top as its top."""
    import numpy as np
    mean, variance, factor = (np.asarray(blob, np.float64) for blob in arrays[norm.name])
    factor = 0.0 if factor.reshape(-1)[0] == 0 else 1.0 / factor.reshape(-1)[0]
    multiplier = 1.0 / np.sqrt(variance.reshape(-1) * factor + norm.batch_norm_param.eps)
    shift = -mean.reshape(-1) * factor * multiplier
    if after is not None:
        blobs = [np.asarray(blob, np.float64).reshape(-1) for blob in arrays[after.name]]
        multiplier, shift = multiplier * blobs[0], shift * blobs[0] + (blobs[1] if len(blobs) > 1 else 0)
    weight, *bias = (np.asarray(blob, np.float64) for blob in arrays[producer.name])
    transposed = producer.type == "InnerProduct" and producer.inner_product_param.transpose
    if transposed:
        weight = weight * multiplier[None, :]
    else:
        weight = weight * multiplier.reshape((-1,) + (1,) * (weight.ndim - 1))
    bias = (bias[0].reshape(-1) if bias else 0.0) * multiplier + shift
    arrays[producer.name] = [weight.astype(np.float32), bias.astype(np.float32)]
    target = next(layer for layer in net.layer if layer.name == producer.name)
    getattr(target, FOLDABLE[producer.type]).bias_term = True
    target.top[0] = (after or norm).top[0]


def _values(caffemodel, name, shapes):
    import numpy as np
    return [np.asarray(array, np.float32).reshape(shape)
            for array, shape in zip(caffemodel.values(name), shapes)]


def _copy(net):
    copy = type(net)()
    copy.CopyFrom(net)
    return copy
