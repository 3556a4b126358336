"""Wiring an FCN-style net to a segmentation job: HDF5Data layers of images and masks, a pixel loss and accuracy.

The data layers replaced are Caffe's own or, as in FCN's published nets, a Python layer with no
bottoms and two tops (image and label), whose ``param_str`` may state the mean.

The loss is the net's SoftmaxWithLoss over an N×K×H×W score, set to ignore label 255 and to sum
over pixels (``normalize: false``), as FCN trains; the TEST net gains a pixel Accuracy with the
same ignore label when it has none.
"""

import re

from caffegen.defaults import IGNORE_LABEL
from caffegen.errors import CaffegenError
from caffegen.net.layers import DATA_TYPES
from caffegen.net.netview import PHASE_NUMBERS, TEST, TRAIN, NetView
from caffegen.net.shapes import infer_shapes

SOURCES = {"train": "train_h5.txt", "val": "val_h5.txt"}
PYTHON_MEAN = re.compile(r"""['"]mean['"]\s*:\s*[(\[]([^)\]]*)[)\]]""")


def segmentation_data_layers(net):
    """The layers of ``net`` that feed it images and labels: data layers, or FCN's Python data layers."""
    return [layer for layer in net.layer if layer.type in DATA_TYPES
            or (layer.type == "Python" and not layer.bottom and len(layer.top) == 2)]


def stated_mean(layer):
    """The per-channel mean ``layer`` subtracts: its transform's mean_value, or the 'mean' of a Python layer's
    param_str."""
    if layer.transform_param.mean_value:
        return list(layer.transform_param.mean_value)
    found = PYTHON_MEAN.search(layer.python_param.param_str) if layer.type == "Python" else None
    return [float(value) for value in found.group(1).split(",") if value.strip()] if found else []


def wire_segmentation(net, batch_size, val_batch_size, input_shape, path=None):
    """Give ``net`` (in place) HDF5Data layers, a pixel loss and accuracy; return the score blob's name."""
    _wire_hdf5_data(net, batch_size or 1, val_batch_size or 1, path)
    loss = spatial_loss(net, input_shape, path)
    loss.loss_param.ignore_label = IGNORE_LABEL
    loss.loss_param.normalize = False
    _pixel_accuracy(net, loss)
    return loss.bottom[0]


def _wire_hdf5_data(net, batch_size, val_batch_size, path):
    """Replace the data layers of ``net`` by one HDF5Data layer per phase, in the first one's place."""
    layers = segmentation_data_layers(net)
    if not layers:
        raise CaffegenError("--task segmentation needs a train_val net with a data layer of images and labels "
                            "(a deploy net gains none for segmentation)", path)
    if any(len(layer.top) != 2 for layer in layers):
        raise CaffegenError(f"data layer '{layers[0].name}' must have two tops (images and masks)", path)
    tops, name = list(layers[0].top), layers[0].name
    kept = [layer for layer in net.layer if all(layer is not data for data in layers)]
    new = []
    for phase, subset, batch in ((TRAIN, "train", batch_size), (TEST, "val", val_batch_size)):
        layer = type(layers[0])(name=name, type="HDF5Data", top=tops)
        layer.include.add().phase = PHASE_NUMBERS[phase]
        layer.hdf5_data_param.source, layer.hdf5_data_param.batch_size = SOURCES[subset], batch
        layer.hdf5_data_param.shuffle = phase == TRAIN
        new.append(layer)
    net.ClearField("layer")
    net.layer.extend(new + kept)


def spatial_loss(net, input_shape, path=None):
    """The TRAIN net's SoftmaxWithLoss over an N×K×H×W score; a net without one is refused."""
    view = NetView(net, TRAIN)
    blobs = {blob: shape for result in infer_shapes(view, input_shape) for blob, shape in result.tops.items()}
    losses = [layer for layer in view.layers if layer.type == "SoftmaxWithLoss"]
    spatial = [layer for layer in losses if blobs.get(layer.bottom[0]) is not None
               and len(blobs[layer.bottom[0]]) == 4 and tuple(blobs[layer.bottom[0]][2:]) != (1, 1)]
    if not spatial:
        found = ", ".join(f"'{layer.name}' over {blobs.get(layer.bottom[0]) or 'an unknown shape'}"
                          for layer in losses) or "no SoftmaxWithLoss"
        raise CaffegenError(f"--task segmentation needs a SoftmaxWithLoss over an N×K×H×W score (an FCN), "
                            f"found {found}", path)
    return next(layer for layer in net.layer if layer.name == spatial[-1].name)


def _pixel_accuracy(net, loss):
    """Set the ignore label of the Accuracy on the loss's score, adding a TEST-phase one when there is none."""
    accuracies = [layer for layer in net.layer if layer.type == "Accuracy" and layer.bottom[0] == loss.bottom[0]]
    if not accuracies:
        accuracy = net.layer.add(name="accuracy", type="Accuracy", bottom=list(loss.bottom[:2]), top=["accuracy"])
        accuracy.include.add().phase = PHASE_NUMBERS[TEST]
        accuracies = [accuracy]
    for accuracy in accuracies:
        accuracy.accuracy_param.ignore_label = IGNORE_LABEL
