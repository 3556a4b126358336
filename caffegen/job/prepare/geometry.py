"""The input's geometry and its mean: the mean file a job uses, checked against the images, the scale, and
the size and channels the net is fed."""

from pathlib import Path

from PIL import Image

from caffegen.errors import CaffegenError
from caffegen.io.datasources import first_input
from caffegen.io.meanfile import read_mean_file
from caffegen.job.dataset import Dataset
from caffegen.job.options import MEAN_IMAGE
from caffegen.job.prepare.inputs import existing_file
from caffegen.net.wiring import data_layers

MEAN_FILE = "mean.binaryproto"  # the run directory's copy of the mean file


def resolve_mean_file(net, options, dataset):
    """The mean file the data layers use (a MeanFile, read and checked), pointed at its copy in the run directory.

    ``--mean-value`` replaces the mean file of every data layer, ``--mean-file`` the mean of every data layer;
    without either, the base net's mean file is looked for beside the net. ``--mean image`` points every data
    layer at the mean image that compute_image_mean writes once train_lmdb is built (None is returned then).
    """
    mean_value = options.data_settings.mean_value
    if options.mean == MEAN_IMAGE:  # computed from train_lmdb once it is built
        for layer in data_layers(net):
            layer.transform_param.ClearField("mean_value")
            layer.transform_param.mean_file = MEAN_FILE
        return None
    if mean_value and options.mean_file:
        raise CaffegenError("give --mean-value or --mean-file, not both")
    if mean_value:
        for layer in data_layers(net):
            layer.transform_param.ClearField("mean_file")
            layer.transform_param.ClearField("mean_value")
            layer.transform_param.mean_value.extend(mean_value)
        return None
    if options.mean_file:
        layers, found = data_layers(net), existing_file(options.mean_file, "mean")
    else:
        layers = [layer for layer in data_layers(net) if layer.transform_param.mean_file]
        if not layers:
            return None
        named = Path(layers[0].transform_param.mean_file)
        candidates = [named, Path(options.net).parent / named, Path(options.net).parent / named.name]
        found = next((path.resolve() for path in candidates if path.is_file()), None)
        if found is None:
            raise CaffegenError(f"the base net's mean_file '{named}' is not found; pass --mean-file PATH "
                                "or --mean-value B,G,R", options.net)
    mean = read_mean_file(found)
    for layer in layers:
        _check_mean_file(mean, layer, dataset)
        layer.transform_param.ClearField("mean_value")
        layer.transform_param.mean_file = MEAN_FILE
    return mean


def _check_mean_file(mean, layer, dataset):
    """Refuse a mean file that Caffe would abort on in ``layer``: other channels, or images of another size."""
    if layer.type != "ImageData":
        return  # what an LMDB holds is not known here
    channels = input_channels(layer)
    if mean.channels != channels:
        kind = "gray" if channels == 1 else "colour (BGR)"
        raise CaffegenError(f"the mean file has {mean.channels} channel(s), but data layer '{layer.name}' feeds the "
                            f"net {kind} images of {channels}: give the mean file of this model, or --mean-value",
                            mean.path)
    params = layer.image_data_param
    if params.new_height and params.new_width:
        size, how = (params.new_height, params.new_width), "resized to"
    elif isinstance(dataset, Dataset):
        with Image.open(dataset.train[0][0]) as image:
            size, how = (image.height, image.width), "not resized; the first is"
    else:
        return
    if size != mean.size:
        height, width = mean.size
        instead = "--mean-value " + ",".join(f"{value:.2f}" for value in mean.channel_means)
        raise CaffegenError(f"the mean file is {height}×{width}, but data layer '{layer.name}' gets images {how} "
                            f"{size[0]}×{size[1]}: Caffe subtracts a mean file only from images of its size; pass "
                            f"--resize {height},{width}, or subtract its per-channel mean instead ({instead})",
                            mean.path)


def input_channels(layer):
    """The channels a data layer feeds the net: 1 for gray images, else 3."""
    return 1 if not layer.image_data_param.is_color or layer.transform_param.force_gray else 3


def set_scale(net, scale):
    """Give every data layer ``scale`` (None: keep the base net's)."""
    if scale is not None:
        for layer in data_layers(net):
            layer.transform_param.scale = scale


def input_geometry(net, dataset, settings, databases=None, net_dir=None):
    """(channels, height, width) the deploy net takes: the crop, the resize, or the images' own size.

    A Data layer takes the shape of the first Datum of its LMDB, as Caffe does: in ``databases`` (a
    folder) for those prepare built, which must be readable, else beside the net (``net_dir``).
    """
    layer = data_layers(net)[0]
    crop = layer.transform_param.crop_size
    if layer.type == "Data":
        first = first_input(layer, databases or net_dir)
        if first.shape is not None:
            channels, height, width = first.shape
            return (channels, crop, crop) if crop else (channels, height, width)
        if databases is not None:
            raise CaffegenError(f"cannot tell the input size: {first.origin}", databases / layer.data_param.source)
    channels = input_channels(layer)
    if crop:
        return channels, crop, crop
    if layer.image_data_param.new_height:
        return channels, layer.image_data_param.new_height, layer.image_data_param.new_width
    if settings.resize:
        return (channels, *settings.resize)
    if not isinstance(dataset, Dataset):
        raise CaffegenError("cannot tell the input size of the deploy net: the data layers neither crop nor "
                            "resize; pass --resize H,W")
    with Image.open(dataset.train[0][0]) as image:
        return channels, image.height, image.width
