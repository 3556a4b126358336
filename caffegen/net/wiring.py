"""Wiring a base net to a fine-tuning job: ImageData layers on the job's lists, and a deploy net.

A train_val net keeps everything but its data layers, which become ``ImageData`` layers with
the base net's batch sizes and transformations (mirroring for training only). A deploy-only net
(ResNet, MobileNet publish only those) gains data layers, a loss and an accuracy instead.
"""

from dataclasses import dataclass

from caffegen.errors import CaffegenError
from caffegen.io.messages import copy_field
from caffegen.net.layers import BATCH_PARAMS, DATA_TYPES
from caffegen.net.netview import PHASE_NUMBERS, TEST, TRAIN, NetView

# The parameter message holding a data layer's batch size, by its type in lower case (ImageData: image_data_param).
BATCH_PARAM_OF_TYPE = {name.removesuffix("_param").replace("_", ""): name for name in BATCH_PARAMS}

CARRIED_TRANSFORMS = ("scale", "crop_size", "mean_file", "mean_value", "force_color", "force_gray")
DEFAULT_BATCH = {TRAIN: 32, TEST: 50}


@dataclass
class DataSettings:
    """How the job feeds images: batch sizes (None: the base net's), resize, mean, scale (None: the base net's)."""

    batch_size: int = None
    val_batch_size: int = None
    resize: tuple = None
    mean_value: tuple = ()
    scale: float = None


def data_layers(net):
    """The data layers of ``net`` in order."""
    return [layer for layer in net.layer if layer.type in DATA_TYPES]


def wire_image_data(net, settings, path=None):
    """Replace the data layers of ``net`` (in place) by ImageData layers reading train.txt and val.txt.

    Returns {phase: batch size}.
    """
    if not data_layers(net):
        add_training_layers(net, settings, path)
    batches = {}
    for phase, source in ((TRAIN, "train.txt"), (TEST, "val.txt")):
        base = _phase_data_layer(net, phase, path)
        replacement = _image_data_layer(base, phase, source, settings)
        batches[phase] = replacement.image_data_param.batch_size
        _insert_replacing(net, base, replacement)
    return batches


def read_from_lmdb(net, sources):
    """Turn the ImageData layers that wire_image_data made into Data layers reading the LMDB ``sources[phase]``.

    The images are in the databases as the ImageData layers would have read them (resized, gray or
    colour), so only the batch size and the transformations carry over.
    """
    for phase, source in sources.items():
        layer = _phase_data_layer(net, phase, None)
        batch_size = layer.image_data_param.batch_size
        layer.ClearField("image_data_param")
        layer.type = "Data"
        params = layer.data_param
        params.source, params.batch_size, params.backend = source, batch_size, params.LMDB


def phase_batch_sizes(net, settings, path=None):
    """{phase: batch size} of the data layers of ``net`` (``settings`` override the net's own)."""
    return {phase: _batch_size(_phase_data_layer(net, phase, path), phase, settings) for phase in (TRAIN, TEST)}


def _phase_data_layer(net, phase, path):
    layers = [layer for layer in NetView(net, phase).layers if layer.type in DATA_TYPES]
    if len(layers) != 1:
        names = ", ".join(layer.name for layer in layers) or "none"
        raise CaffegenError(f"expected one data layer in the {phase} phase, found {names}; "
                            "keep your own with --keep-data-layers", path)
    if len(layers[0].top) != 2:
        raise CaffegenError(f"data layer '{layers[0].name}' must have two tops (images and labels)", path)
    return layers[0]


def _image_data_layer(base, phase, source, settings):
    layer = type(base)()
    layer.name, layer.type = base.name, "ImageData"
    layer.top.extend(base.top)
    layer.include.add().phase = PHASE_NUMBERS[phase]
    for field in CARRIED_TRANSFORMS:
        copy_field(base.transform_param, layer.transform_param, field)
    if phase == TRAIN and base.transform_param.mirror:
        layer.transform_param.mirror = True
    params = layer.image_data_param
    params.source = source
    params.batch_size = _batch_size(base, phase, settings)
    if phase == TRAIN:
        params.shuffle = True
    resize = settings.resize or _base_resize(base)
    if resize:
        params.new_height, params.new_width = resize
    if base.type == "ImageData":
        params.is_color = base.image_data_param.is_color
    return layer


def set_batch(net, phase, batch, path=None):
    """Give the data layer of ``phase`` a batch of ``batch`` images; False for a type without one (DummyData)."""
    layer = _phase_data_layer(net, phase, path)
    name = BATCH_PARAM_OF_TYPE.get(layer.type.lower())
    if name is None:
        return False
    getattr(layer, name).batch_size = batch
    return True


def _batch_size(base, phase, settings):
    chosen = settings.batch_size if phase == TRAIN else settings.val_batch_size
    if chosen:
        return chosen
    for name in BATCH_PARAMS:
        if base.HasField(name) and getattr(base, name).batch_size:
            return getattr(base, name).batch_size
    return DEFAULT_BATCH[phase]


def _base_resize(base):
    params = base.image_data_param
    if base.type == "ImageData" and params.new_height and params.new_width:
        return params.new_height, params.new_width
    crop = base.transform_param.crop_size
    if crop:
        side = 256 if crop in (224, 227) else crop + crop // 7
        return side, side
    return None


def _insert_replacing(net, old, new):
    index = next(i for i, layer in enumerate(net.layer) if layer is old)
    net.layer[index].CopyFrom(new)


def add_training_layers(net, settings, path=None):
    """Give a deploy net (Input layer or input fields) data layers, a loss and an accuracy, in place."""
    view = NetView(net, TEST)
    if len(view.inputs) != 1:
        raise CaffegenError("a net without data layers needs exactly one input blob to feed images into, "
                            f"found {len(view.inputs)}", path)
    blob, dims = view.inputs[0], _input_dims(net)
    softmaxes = [layer for layer in net.layer if layer.type == "Softmax"]
    if len(softmaxes) != 1:
        raise CaffegenError("a deploy net must end in one Softmax to be turned into a training net", path)
    scores = softmaxes[0].bottom[0]
    layers = [layer for layer in net.layer if layer.type != "Input" and layer is not softmaxes[0]]
    for field in ("input", "input_dim", "input_shape"):
        net.ClearField(field)
    net.ClearField("layer")
    for phase in (TRAIN, TEST):
        data = net.layer.add(name="data", type="ImageData", top=[blob, "label"])
        data.include.add().phase = PHASE_NUMBERS[phase]
        data.image_data_param.is_color = dims[1] != 1
        data.image_data_param.batch_size = DEFAULT_BATCH[phase]
        data.transform_param.crop_size = dims[2]
    net.layer.extend(layers)
    net.layer.add(name="loss", type="SoftmaxWithLoss", bottom=[scores, "label"], top=["loss"])
    accuracy = net.layer.add(name="accuracy", type="Accuracy", bottom=[scores, "label"], top=["accuracy"])
    accuracy.include.add().phase = PHASE_NUMBERS[TEST]


def _input_dims(net):
    for layer in net.layer:
        if layer.type == "Input":
            return list(layer.input_param.shape[0].dim)
    if net.input_shape:
        return list(net.input_shape[0].dim)
    return list(net.input_dim[:4])


def deploy_net(train_val, num_channels, height, width):
    """The deploy version of a train_val net: an Input layer, the layers the main classifier needs, a Softmax.

    The main classifier is the one the last SoftmaxWithLoss of the TEST phase scores; auxiliary
    classifiers (GoogLeNet's) and every layer that reads labels are left out.
    """
    view = NetView(train_val, TEST)
    data = [layer for layer in view.layers if layer.type in DATA_TYPES]
    losses = [layer for layer in view.layers if layer.type == "SoftmaxWithLoss"]
    if len(data) != 1 or not losses:
        raise CaffegenError("cannot derive a deploy net: expected one TEST-phase data layer and a SoftmaxWithLoss")
    image_blob = data[0].top[0]
    deploy = type(train_val)()
    deploy.name = train_val.name
    deploy.layer.add(name=image_blob, type="Input", top=[image_blob]).input_param.shape.add(
        dim=[1, num_channels, height, width])
    needed = view.ancestors(losses[-1].name) - {data[0].name}
    for layer in view.layers:
        if layer.name in needed:
            copy = deploy.layer.add()
            copy.CopyFrom(layer)
            copy.ClearField("include")
            copy.ClearField("exclude")
    deploy.layer.add(name="prob", type="Softmax", bottom=[losses[-1].bottom[0]], top=["prob"])
    return deploy


def preprocessing(net):
    """What the TEST data layer does to an image before the net sees it, as the manifest records it.

    Caffe's image layers decode with OpenCV, so channels are in BGR order; the mean is subtracted
    before ``scale`` multiplies.
    """
    layer = next((layer for layer in NetView(net, TEST).layers if layer.type in DATA_TYPES), None)
    if layer is None:
        return None
    transform, images = layer.transform_param, layer.image_data_param
    gray = transform.force_gray or (layer.type == "ImageData" and not images.is_color)
    return {
        "layer_type": layer.type,
        "channel_order": "gray" if gray else "BGR",
        "resize": [images.new_height, images.new_width] if layer.type == "ImageData" and images.new_height else None,
        "crop_size": transform.crop_size or None,
        "mean_value": list(transform.mean_value),
        "mean_file": transform.mean_file or None,
        "scale": transform.scale,
    }


def fit_crop(net, resize_given, cache_features, path=None):
    """Make each ImageData layer's crop agree with its resize, or refuse; return what was changed, in words.

    A one-time feature cache keeps one crop per image, so without ``--resize`` it resizes the images
    to the crop. A crop larger than the resize fails in Caffe ("img_height >= crop_size"): a net
    whose classifier pools globally or is fully convolutional takes the smaller input, so the crop
    follows the resize; a net with a fixed-size InnerProduct after its convolutions is refused with
    the size it needs.
    """
    notes = []
    for layer in (layer for layer in data_layers(net) if layer.type == "ImageData"):
        transform, params = layer.transform_param, layer.image_data_param
        crop = transform.crop_size
        if not crop:
            continue
        if cache_features and not resize_given and (params.new_height, params.new_width) != (crop, crop):
            params.new_height = params.new_width = crop
            notes.append(f"'{layer.name}': resizing the images to the {crop}×{crop} crop, since a one-time feature "
                         "cache cannot keep a fresh random crop of each image")
        side = min(params.new_height, params.new_width) if params.new_height and params.new_width else None
        if side is None or crop <= side:
            continue
        fixed = _fixed_size_layer(net)
        if fixed is not None:
            raise CaffegenError(f"--resize {params.new_height},{params.new_width} is smaller than the {crop}×{crop} "
                                f"crop this net needs: '{fixed}' is an InnerProduct of fixed input size after the "
                                f"convolutions; pass --resize {crop},{crop} or larger", path)
        transform.crop_size = side
        notes.append(f"'{layer.name}': crop_size {crop} → {side} to fit the resized {params.new_height}×"
                     f"{params.new_width} images (the classifier pools globally or the net is fully convolutional)")
    return notes


def _fixed_size_layer(net):
    """The first InnerProduct whose input size depends on the image size, or None."""
    view = NetView(net, TRAIN)
    for layer in view.layers:
        if layer.type != "InnerProduct":
            continue
        above = [view.layer(name) for name in view.ancestors(layer.name)]
        spatial = any(other.type == "Convolution" for other in above)
        pooled = any(other.type == "Pooling" and other.pooling_param.global_pooling for other in above)
        if spatial and not pooled:
            return layer.name
    return None


def image_input_net(deploy, preprocessing, source, batch_size, resize=None):
    """A copy of ``deploy`` that reads the images of list ``source`` as its TEST data layer did in training.

    Its Input layer becomes an ``ImageData`` layer with the recorded ``preprocessing`` (mean, scale,
    crop, colour) and ``resize`` (H, W) in place of the recorded one when given; the labels it reads
    go to a top that nothing uses.
    """
    net = type(deploy)()
    net.CopyFrom(deploy)
    inputs = [layer for layer in net.layer if layer.type == "Input"]
    if len(inputs) != 1 or len(inputs[0].top) != 1:
        raise CaffegenError("the deploy net must have one Input layer with one top to be fed images")
    layer = type(inputs[0])(name=inputs[0].name, type="ImageData", top=[inputs[0].top[0], "caffegen_list_label"])
    transform, params = layer.transform_param, layer.image_data_param
    transform.scale = preprocessing.get("scale", 1.0)
    transform.mean_value.extend(preprocessing.get("mean_value") or ())
    if preprocessing.get("mean_file"):
        transform.mean_file = str(preprocessing["mean_file"])
    if preprocessing.get("crop_size"):
        transform.crop_size = preprocessing["crop_size"]
    params.source, params.batch_size = str(source), batch_size
    params.is_color = preprocessing.get("channel_order") != "gray"
    resize = resize or preprocessing.get("resize")
    if resize:
        params.new_height, params.new_width = resize
    _insert_replacing(net, inputs[0], layer)
    return net
