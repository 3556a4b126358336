"""Upgrade legacy V1 nets (``layers { type: CONVOLUTION }``) to the current ``layer {}`` form.

Follows Caffe's own ``UpgradeV1Net``: enum types become type strings, ``blobs_lr`` becomes
``param.lr_mult``, ``weight_decay`` becomes ``param.decay_mult``, shared parameter names and
share modes move into ``param``, and every ``*_param`` message is carried over unchanged. As
``UpgradeNetDataTransformation`` does, the deprecated transformation fields of data layers
(``scale``, ``mean_file``, ``crop_size``, ``mirror``) move into ``transform_param``.
"""

from caffegen.errors import CaffegenError
from caffegen.io.messages import copy_field

V1_TYPE_NAMES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DATA": "Data", "DECONVOLUTION": "Deconvolution", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col", "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct", "LRN": "LRN", "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN", "POOLING": "Pooling",
    "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

DATA_LAYER_PARAMS = ("data_param", "image_data_param", "window_data_param")
DEPRECATED_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")
SHARED_FIELDS = ("name", "bottom", "top", "include", "exclude", "blobs", "loss_weight")


def is_v1_net(net):
    """Whether ``net`` uses the legacy ``layers {}`` field."""
    return len(net.layers) > 0


def upgrade_v1_net(net, schema, path=None):
    """Return a copy of V1 ``net`` with every ``layers`` entry rewritten as a ``layer``."""
    if len(net.layer) > 0:
        raise CaffegenError("net mixes legacy 'layers' and current 'layer' entries; use one form", path)
    upgraded = schema.NetParameter()
    upgraded.CopyFrom(net)
    upgraded.ClearField("layers")
    for v1_layer in net.layers:
        upgraded.layer.add().CopyFrom(upgrade_v1_layer(v1_layer, schema, path))
    return upgraded


def upgrade_v1_layer(v1_layer, schema, path=None):
    """Translate one ``V1LayerParameter`` into a ``LayerParameter``."""
    if v1_layer.HasField("layer"):
        raise CaffegenError(
            f"layer '{v1_layer.name}' uses the V0 format (layers {{ layer {{ … }} }}); "
            "upgrade it first with Caffe's upgrade_net_proto_text", path)
    layer = schema.LayerParameter()
    for field in SHARED_FIELDS:
        copy_field(v1_layer, layer, field)
    if v1_layer.HasField("type"):
        layer.type = V1_TYPE_NAMES[v1_layer.DESCRIPTOR.fields_by_name["type"].enum_type
                                   .values_by_number[v1_layer.type].name]
    _upgrade_param_specs(v1_layer, layer)
    for field in v1_layer.DESCRIPTOR.fields:
        if field.name.endswith("_param") and field.name in layer.DESCRIPTOR.fields_by_name:
            copy_field(v1_layer, layer, field.name)
    _move_deprecated_transforms(layer)
    return layer


def _upgrade_param_specs(v1_layer, layer):
    count = max(len(v1_layer.param), len(v1_layer.blob_share_mode),
                len(v1_layer.blobs_lr), len(v1_layer.weight_decay))
    for i in range(count):
        spec = layer.param.add()
        if i < len(v1_layer.param):
            spec.name = v1_layer.param[i]
        if i < len(v1_layer.blob_share_mode):
            spec.share_mode = v1_layer.blob_share_mode[i]
        if i < len(v1_layer.blobs_lr):
            spec.lr_mult = v1_layer.blobs_lr[i]
        if i < len(v1_layer.weight_decay):
            spec.decay_mult = v1_layer.weight_decay[i]


def _move_deprecated_transforms(layer):
    for param_name in DATA_LAYER_PARAMS:
        if not layer.HasField(param_name):
            continue
        data_param = getattr(layer, param_name)
        for field in DEPRECATED_TRANSFORM_FIELDS:
            if field in data_param.DESCRIPTOR.fields_by_name and data_param.HasField(field):
                setattr(layer.transform_param, field, getattr(data_param, field))
                data_param.ClearField(field)
