"""What caffegen knows about Caffe's layer types: their kinds, learnable blobs and output counts."""

from difflib import get_close_matches

from caffegen.errors import did_you_mean
from caffegen.io.schema import BVLC

# Caffe 1.0's layer registry, as the Caffe that caffegen installs lists it when a type is unknown (a test
# holds the two alike). Python is registered, but runs only where Caffe's embedded Python finds pycaffe.
BVLC_TYPES = frozenset((
    "AbsVal", "Accuracy", "ArgMax", "BNLL", "BatchNorm", "BatchReindex", "Bias", "Clip", "Concat", "ContrastiveLoss",
    "Convolution", "Crop", "Data", "Deconvolution", "Dropout", "DummyData", "ELU", "Eltwise", "Embed",
    "EuclideanLoss", "Exp", "Filter", "Flatten", "HDF5Data", "HDF5Output", "HingeLoss", "Im2col", "ImageData",
    "InfogainLoss", "InnerProduct", "Input", "LRN", "LSTM", "LSTMUnit", "Log", "MVN", "MemoryData",
    "MultinomialLogisticLoss", "PReLU", "Parameter", "Pooling", "Power", "Python", "RNN", "ReLU", "Reduction",
    "Reshape", "SPP", "Scale", "Sigmoid", "SigmoidCrossEntropyLoss", "Silence", "Slice", "Softmax",
    "SoftmaxWithLoss", "Split", "Swish", "TanH", "Threshold", "Tile", "WindowData",
))
PYTHON = "Python"
# The layer types of forks that caffegen knows, in nets read with the fork's schema (--proto): SSD's.
FORK_TYPES = frozenset(("AnnotatedData", "DetectionEvaluate", "DetectionOutput", "MultiBoxLoss", "Normalize",
                        "Permute", "PriorBox"))

# Layers that read images, features or labels from outside the net.
DATA_TYPES = {"Data", "ImageData", "HDF5Data", "WindowData", "MemoryData", "DummyData", "AnnotatedData"}
# The parameter messages of data layers that carry a batch size, as the schema declares them.
BATCH_PARAMS = tuple(field.name for field in BVLC.LayerParameter.DESCRIPTOR.fields
                     if field.name.endswith("_param") and "batch_size" in field.message_type.fields_by_name)
# Losses: their one top is a scalar.
LOSS_TYPES = {"SoftmaxWithLoss", "EuclideanLoss", "SigmoidCrossEntropyLoss", "HingeLoss", "InfogainLoss",
              "MultinomialLogisticLoss", "ContrastiveLoss"}
# Layers whose top has the shape of their bottom.
ELEMENTWISE_TYPES = {"AbsVal", "BNLL", "BatchNorm", "Bias", "Clip", "Dropout", "ELU", "Exp", "LRN", "Log", "MVN",
                     "PReLU", "Power", "ReLU", "Scale", "Sigmoid", "Softmax", "Swish", "TanH", "Threshold"}
# Layers whose output is random in training: a fresh draw at every iteration.
RANDOM_TYPES = {"Dropout"}

# Types that have no learnable blobs.
KNOWN_PARAMETER_FREE = {
    "AbsVal", "Accuracy", "ArgMax", "BNLL", "BatchReindex", "Clip", "Concat", "ContrastiveLoss", "Crop",
    "Data", "Dropout", "DummyData", "ELU", "Eltwise", "EuclideanLoss", "Exp", "Filter", "Flatten",
    "HDF5Data", "HDF5Output", "HingeLoss", "Im2col", "ImageData", "InfogainLoss", "Input", "LRN", "Log",
    "MVN", "MemoryData", "MultinomialLogisticLoss", "Pooling", "Power", "ReLU",
    "Reduction", "Reshape", "SPP", "Sigmoid", "SigmoidCrossEntropyLoss", "Silence", "Slice", "Softmax",
    "SoftmaxWithLoss", "Split", "Swish", "TanH", "Threshold", "Tile", "WindowData",
    # SSD's layers (weiliu89/caffe, branch ssd)
    "AnnotatedData", "DetectionEvaluate", "DetectionOutput", "MultiBoxLoss", "Permute", "PriorBox",
}
# Types whose learnable-blob count is fixed, or base + 1 when their bias_term flag is on.
FIXED_BLOBS = {"BatchNorm": 3, "Bias": 1, "PReLU": 1, "Parameter": 1, "LSTM": 3, "RNN": 5, "Normalize": 1}
BIAS_TERM_BLOBS = {
    # layer type -> (its parameter message, weight blobs, bias_term default)
    "Convolution": ("convolution_param", 1, True),
    "Deconvolution": ("convolution_param", 1, True),
    "InnerProduct": ("inner_product_param", 1, True),
    "Embed": ("embed_param", 1, True),
    "Scale": ("scale_param", 1, False),
}
NUM_OUTPUT_PARAMS = {"Convolution": "convolution_param", "Deconvolution": "convolution_param",
                     "InnerProduct": "inner_product_param", "Embed": "embed_param"}
# Caffe's reference models let bias terms learn twice as fast as weights.
BIAS_LR_FACTOR = 2.0
SOFTMAX_TYPES = {"Softmax", "SoftmaxWithLoss"}
# SSD's layers that state the number of classes, with the parameter message holding their num_classes.
NUM_CLASSES_PARAMS = {"MultiBoxLoss": "multibox_loss_param", "DetectionOutput": "detection_output_param",
                      "DetectionEvaluate": "detection_evaluate_param"}
# Layers that read class scores at the end of a class axis: losses and outputs of classes.
CLASS_AXIS_ROOTS = SOFTMAX_TYPES | set(NUM_CLASSES_PARAMS)
ALL_BOTTOMS = None
# The bottoms that carry class scores into a layer that keeps its input's classes (ALL_BOTTOMS: every one):
# Crop's second bottom only gives the size, SSD's detection layers take the confidences second (or read them
# from DetectionOutput's detections), and parameter-free element-wise layers keep every axis.
CLASS_AXIS_BOTTOMS = {
    "Crop": (0,), "Eltwise": ALL_BOTTOMS, "Concat": ALL_BOTTOMS, "Flatten": (0,), "Permute": (0,), "Reshape": (0,),
    "Split": (0,), "Pooling": (0,), "SoftmaxWithLoss": (0,),
    "MultiBoxLoss": (1,), "DetectionOutput": (1,), "DetectionEvaluate": (0,),
    **{layer_type: (0,) for layer_type in ELEMENTWISE_TYPES & KNOWN_PARAMETER_FREE},
}


def unknown_type(layer):
    """Why no Caffe builds ``layer``, whose type is in no registry caffegen knows (with the closest names), or None.

    A net read with a fork's schema may use the fork's own types: caffegen cannot tell those from typos.
    """
    if layer.type in BVLC_TYPES or layer.type in FORK_TYPES or layer.DESCRIPTOR is not BVLC.LayerParameter.DESCRIPTOR:
        return None
    close = get_close_matches(layer.type, sorted(BVLC_TYPES), n=2, cutoff=0.6)
    return f"Caffe 1.0 has no layer type {layer.type!r}{did_you_mean(close)}"


def python_layer_note(layer):
    """What a Python layer needs of the Caffe that trains it (the one caffegen installs lacks it)."""
    module = layer.python_param.module or "?"
    return (f"layer '{layer.name}' is a Python layer (module '{module}'): Caffe runs it in its embedded Python, "
            "which needs pycaffe and the module on its PYTHONPATH; the CPU Caffe that caffegen installs cannot run "
            "it (its Python finds no standard library): train this job with a Caffe that can")


def learnable_blob_count(layer):
    """How many learnable blobs Caffe gives ``layer``; None for a type caffegen does not know.

    A Scale or Bias layer with two bottoms takes its factor from the second one, not from a blob;
    an unknown type (a Python layer, a fork's layer) is taken at its ``param`` entries, if any.
    """
    if layer.type in KNOWN_PARAMETER_FREE:
        return 0
    if layer.type in FIXED_BLOBS:
        return 0 if _factor_from_bottom(layer) else FIXED_BLOBS[layer.type]
    if layer.type in BIAS_TERM_BLOBS:
        return _weight_blobs(layer) + int(_has_bias(layer))
    return len(layer.param) if layer.param else None


def bias_blob_index(layer):
    """Which learnable blob of ``layer`` is a bias term (it learns at BIAS_LR_FACTOR × the rate), or None."""
    if layer.type in BIAS_TERM_BLOBS and _has_bias(layer):
        return _weight_blobs(layer)
    return None


def _factor_from_bottom(layer):
    return layer.type in ("Scale", "Bias") and len(layer.bottom) > 1


def _weight_blobs(layer):
    return 0 if _factor_from_bottom(layer) else BIAS_TERM_BLOBS[layer.type][1]


def _has_bias(layer):
    param_name, _, default = BIAS_TERM_BLOBS[layer.type]
    param = getattr(layer, param_name)
    return param.bias_term if param.HasField("bias_term") else default


def num_output_param(layer):
    """The parameter message holding ``num_output`` for ``layer``, or None."""
    name = NUM_OUTPUT_PARAMS.get(layer.type)
    return getattr(layer, name) if name else None


def is_frozen(layer):
    """Whether every learnable blob of ``layer`` has ``lr_mult: 0`` (a parameter-free layer is not frozen)."""
    count = learnable_blob_count(layer)
    if not count:
        return False
    return len(layer.param) >= count and all(spec.lr_mult == 0 for spec in layer.param[:count])


def class_axis_bottoms(layer):
    """Indexes of the bottoms through which class scores reach ``layer``; () when it does not keep classes."""
    if layer.type not in CLASS_AXIS_BOTTOMS:
        return ()
    carriers = CLASS_AXIS_BOTTOMS[layer.type]
    return tuple(range(len(layer.bottom))) if carriers is ALL_BOTTOMS else carriers


def priors_per_location(prior_box_param):
    """How many boxes an SSD PriorBox places at each location, counted as SSD's prior_box_layer.cpp counts them.

    Aspect ratio 1 comes first; each other ratio counts once however often it is listed, and its
    inverse once more with ``flip``; that set is repeated per ``min_size``, plus one box per ``max_size``.
    """
    ratios = [1.0]
    for ratio in prior_box_param.aspect_ratio:
        if all(abs(ratio - known) >= 1e-6 for known in ratios):
            ratios.append(ratio)
            if prior_box_param.flip:
                ratios.append(1.0 / ratio)
    return len(ratios) * len(prior_box_param.min_size) + len(prior_box_param.max_size)
