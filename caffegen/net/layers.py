"""What caffegen knows about Caffe's layer types: one record per type, from which every set and lookup derives."""

from dataclasses import dataclass
from difflib import get_close_matches

from caffegen.errors import did_you_mean
from caffegen.io.schema import BVLC

# What a layer type is, in the ways caffegen tells them apart.
DATA = "data"  # reads images, features or labels from outside the net
LOSS = "loss"  # its one top is a scalar
ELEMENTWISE = "element-wise"  # its top has the shape of its bottom
OTHER = "other"
ALL_BOTTOMS = "all"  # class scores reach the layer through every bottom
FIRST = (0,)
UNKNOWN = None  # a learnable-blob count caffegen does not know: the layer's ``param`` entries tell


@dataclass(frozen=True)
class BiasTerm:
    """A bias blob after the weights, there when ``param``'s ``bias_term`` is on (``default`` when unset)."""

    param: str
    default: bool = True


@dataclass(frozen=True)
class LayerType:
    """What caffegen knows of one Caffe layer type; adding a type is one of these (and its shape rule)."""

    name: str
    kind: str = OTHER
    blobs: int = 0  # learnable blobs (the weights of a BiasTerm type), or UNKNOWN
    bias_term: BiasTerm = None
    factor_bottom: bool = False  # with a second bottom it takes its factor from there, not from a blob
    num_output_param: str = None  # the parameter message holding num_output
    num_classes_param: str = None  # SSD: the parameter message holding num_classes
    class_root: bool = False  # it reads class scores at the end of a class axis (a Softmax)
    class_bottoms: tuple = ()  # the bottoms through which it keeps its input's classes (ALL_BOTTOMS: every one)
    random: bool = False  # its output in training is a fresh draw at every iteration
    min_bottoms: int = 1  # the fewest bottoms Caffe sets it up with
    needs_top: bool = True  # every layer Caffe knows writes a blob but Silence (a loss gets one if it has none)
    fixed_axes: bool = False  # its own settings fix its output's axes, whatever its input's size
    prefetches: bool = False  # BasePrefetchingDataLayer: holds data_param { prefetch } batches
    shares_bottom: bool = False  # its top shares its bottom's data (and diff)
    fork: bool = False  # a fork's type (SSD's), read with the fork's schema (--proto); not in Caffe 1.0


_CONV = "convolution_param"
TABLE = (
    LayerType("AbsVal", ELEMENTWISE, class_bottoms=FIRST),
    LayerType("Accuracy"),
    LayerType("ArgMax"),
    LayerType("BNLL", ELEMENTWISE, class_bottoms=FIRST),
    LayerType("BatchNorm", ELEMENTWISE, blobs=3),
    LayerType("BatchReindex", min_bottoms=2),
    LayerType("Bias", ELEMENTWISE, blobs=1, factor_bottom=True),
    LayerType("Clip", ELEMENTWISE, class_bottoms=FIRST),
    LayerType("Concat", class_bottoms=ALL_BOTTOMS),
    LayerType("ContrastiveLoss", LOSS),
    LayerType("Convolution", blobs=1, bias_term=BiasTerm(_CONV), num_output_param=_CONV, fixed_axes=True),
    LayerType("Crop", class_bottoms=FIRST, min_bottoms=2),
    LayerType("Data", DATA, prefetches=True),
    LayerType("Deconvolution", blobs=1, bias_term=BiasTerm(_CONV), num_output_param=_CONV, fixed_axes=True),
    LayerType("Dropout", ELEMENTWISE, class_bottoms=FIRST, random=True),
    LayerType("DummyData", DATA),
    LayerType("ELU", ELEMENTWISE, class_bottoms=FIRST),
    LayerType("Eltwise", class_bottoms=ALL_BOTTOMS),
    LayerType("Embed", blobs=1, bias_term=BiasTerm("embed_param"), num_output_param="embed_param"),
    LayerType("EuclideanLoss", LOSS),
    LayerType("Exp", ELEMENTWISE, class_bottoms=FIRST),
    LayerType("Filter"),
    LayerType("Flatten", class_bottoms=FIRST, shares_bottom=True),
    LayerType("HDF5Data", DATA),
    LayerType("HDF5Output"),
    LayerType("HingeLoss", LOSS),
    LayerType("Im2col"),
    LayerType("ImageData", DATA, prefetches=True),
    LayerType("InfogainLoss", LOSS),
    LayerType("InnerProduct", blobs=1, bias_term=BiasTerm("inner_product_param"),
              num_output_param="inner_product_param", fixed_axes=True),
    LayerType("Input"),
    LayerType("LRN", ELEMENTWISE, class_bottoms=FIRST),
    LayerType("LSTM", blobs=3),
    LayerType("LSTMUnit", blobs=UNKNOWN),
    LayerType("Log", ELEMENTWISE, class_bottoms=FIRST),
    LayerType("MVN", ELEMENTWISE, class_bottoms=FIRST),
    LayerType("MemoryData", DATA),
    LayerType("MultinomialLogisticLoss", LOSS),
    LayerType("PReLU", ELEMENTWISE, blobs=1),
    LayerType("Parameter", blobs=1, min_bottoms=0),
    LayerType("Pooling", class_bottoms=FIRST),
    LayerType("Power", ELEMENTWISE, class_bottoms=FIRST),
    LayerType("Python", blobs=UNKNOWN),
    LayerType("RNN", blobs=5),
    LayerType("ReLU", ELEMENTWISE, class_bottoms=FIRST),
    LayerType("Reduction"),
    LayerType("Reshape", class_bottoms=FIRST, shares_bottom=True),
    LayerType("SPP"),
    LayerType("Scale", ELEMENTWISE, blobs=1, bias_term=BiasTerm("scale_param", default=False), factor_bottom=True),
    LayerType("Sigmoid", ELEMENTWISE, class_bottoms=FIRST),
    LayerType("SigmoidCrossEntropyLoss", LOSS),
    LayerType("Silence", needs_top=False),
    LayerType("Slice"),
    LayerType("Softmax", ELEMENTWISE, class_root=True, class_bottoms=FIRST),
    LayerType("SoftmaxWithLoss", LOSS, class_root=True, class_bottoms=FIRST),
    LayerType("Split", class_bottoms=FIRST),
    LayerType("Swish", ELEMENTWISE, class_bottoms=FIRST),
    LayerType("TanH", ELEMENTWISE, class_bottoms=FIRST),
    LayerType("Threshold", ELEMENTWISE, class_bottoms=FIRST),
    LayerType("Tile"),
    LayerType("WindowData", DATA, prefetches=True),
    # SSD's layers (weiliu89/caffe, branch ssd)
    LayerType("AnnotatedData", DATA, fork=True),
    LayerType("DetectionEvaluate", num_classes_param="detection_evaluate_param", class_bottoms=FIRST, min_bottoms=2,
              fork=True),
    LayerType("DetectionOutput", num_classes_param="detection_output_param", class_bottoms=(1,), min_bottoms=3,
              fork=True),
    LayerType("MultiBoxLoss", num_classes_param="multibox_loss_param", class_bottoms=(1,), min_bottoms=4, fork=True),
    LayerType("Normalize", blobs=1, fork=True),
    LayerType("Permute", class_bottoms=FIRST, fork=True),
    LayerType("PriorBox", min_bottoms=2, fork=True),
)
LAYER_TYPES = {layer_type.name: layer_type for layer_type in TABLE}


def _names(where):
    return frozenset(name for name, layer_type in LAYER_TYPES.items() if where(layer_type))


# Caffe 1.0's layer registry, as the Caffe that caffegen installs lists it when a type is unknown (a test
# holds the two alike). Python is registered, but runs only where Caffe's embedded Python finds pycaffe.
BVLC_TYPES = _names(lambda layer_type: not layer_type.fork)
FORK_TYPES = _names(lambda layer_type: layer_type.fork)
PYTHON = "Python"
DATA_TYPES = _names(lambda layer_type: layer_type.kind == DATA)
LOSS_TYPES = _names(lambda layer_type: layer_type.kind == LOSS)
ELEMENTWISE_TYPES = _names(lambda layer_type: layer_type.kind == ELEMENTWISE)
RANDOM_TYPES = _names(lambda layer_type: layer_type.random)
NO_TOP_TYPES = _names(lambda layer_type: not layer_type.needs_top)
AXES_FIXED_TYPES = _names(lambda layer_type: layer_type.fixed_axes)
PREFETCHING_TYPES = _names(lambda layer_type: layer_type.prefetches)
SHARING_TYPES = _names(lambda layer_type: layer_type.shares_bottom)
# SSD's layers that state the number of classes, with the parameter message holding their num_classes.
NUM_CLASSES_PARAMS = {name: layer_type.num_classes_param for name, layer_type in LAYER_TYPES.items()
                      if layer_type.num_classes_param}
# Layers that read class scores at the end of a class axis: losses and outputs of classes.
CLASS_AXIS_ROOTS = _names(lambda layer_type: layer_type.class_root) | set(NUM_CLASSES_PARAMS)
# The parameter messages of data layers that carry a batch size, as the schema declares them.
BATCH_PARAMS = tuple(field.name for field in BVLC.LayerParameter.DESCRIPTOR.fields
                     if field.name.endswith("_param") and "batch_size" in field.message_type.fields_by_name)
# Caffe's reference models let bias terms learn twice as fast as weights.
BIAS_LR_FACTOR = 2.0
MIN_BOTTOMS = {name: layer_type.min_bottoms for name, layer_type in LAYER_TYPES.items()}


def unknown_type(layer):
    """Why no Caffe builds ``layer``, whose type is in no registry caffegen knows (with the closest names), or None.

    A net read with a fork's schema may use the fork's own types: caffegen cannot tell those from typos.
    """
    if layer.type in LAYER_TYPES or layer.DESCRIPTOR is not BVLC.LayerParameter.DESCRIPTOR:
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
    layer_type = LAYER_TYPES.get(layer.type)
    if layer_type is None or layer_type.blobs is UNKNOWN:
        return len(layer.param) if layer.param else None
    return _weight_blobs(layer_type, layer) + int(_has_bias(layer_type, layer))


def bias_blob_index(layer):
    """Which learnable blob of ``layer`` is a bias term (it learns at BIAS_LR_FACTOR × the rate), or None."""
    layer_type = LAYER_TYPES.get(layer.type)
    if layer_type is not None and _has_bias(layer_type, layer):
        return _weight_blobs(layer_type, layer)
    return None


def _weight_blobs(layer_type, layer):
    return 0 if layer_type.factor_bottom and len(layer.bottom) > 1 else layer_type.blobs


def _has_bias(layer_type, layer):
    if layer_type.bias_term is None:
        return False
    param = getattr(layer, layer_type.bias_term.param)
    return param.bias_term if param.HasField("bias_term") else layer_type.bias_term.default


def num_output_param(layer):
    """The parameter message holding ``num_output`` for ``layer``, or None."""
    layer_type = LAYER_TYPES.get(layer.type)
    name = layer_type and layer_type.num_output_param
    return getattr(layer, name) if name else None


def is_frozen(layer):
    """Whether every learnable blob of ``layer`` has ``lr_mult: 0`` (a parameter-free layer is not frozen)."""
    count = learnable_blob_count(layer)
    if not count:
        return False
    return len(layer.param) >= count and all(spec.lr_mult == 0 for spec in layer.param[:count])


def class_axis_bottoms(layer):
    """Indexes of the bottoms through which class scores reach ``layer``; () when it does not keep classes.

    Crop's second bottom only gives the size; SSD's detection layers take the confidences second (or
    read them from DetectionOutput's detections); parameter-free element-wise layers keep every axis.
    """
    layer_type = LAYER_TYPES.get(layer.type)
    if layer_type is None:
        return ()
    carriers = layer_type.class_bottoms
    return tuple(range(len(layer.bottom))) if carriers == ALL_BOTTOMS else carriers


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
