"""A net whose every blob is written once: in-place chains (``bottom == top``) get a blob per layer.

Caffe's in-place layers (a ReLU, a BatchNorm and its Scale after a convolution) overwrite their
input, so the value a convolution wrote cannot be read back by name. Here each write but the
last of a name gets a name of its own, ``BLOB@LAYER``, and later bottoms follow; the last write
keeps the name, so the net's outputs are called what they were. Caffe computes the same values
either way, and every intermediate value can be asked for by name.
"""

from caffegen.net.netview import TEST, NetView


def single_assignment(net, phase=TEST):
    """A copy of ``net`` holding only the layers of ``phase``, each top a blob no other layer writes."""
    view = NetView(net, phase)
    last_writer = {blob: index for index, layer in enumerate(view.layers) for blob in layer.top}
    renamed = type(net)()
    renamed.CopyFrom(net)
    del renamed.layer[:]
    current = {}
    for index, layer in enumerate(view.layers):
        copy = renamed.layer.add()
        copy.CopyFrom(layer)
        copy.ClearField("include")
        copy.ClearField("exclude")
        copy.bottom[:] = [current.get(blob, blob) for blob in layer.bottom]
        tops = [blob if last_writer[blob] == index else f"{blob}@{layer.name}" for blob in layer.top]
        copy.top[:] = tops
        current.update(zip(layer.top, tops))
    return renamed


def net_outputs(view):
    """The blobs of NetView ``view`` that no later layer reads: Caffe's net outputs, in order."""
    read = {blob for layer in view.layers for blob in layer.bottom}
    return [blob for layer in view.layers for blob in layer.top if blob not in read]
