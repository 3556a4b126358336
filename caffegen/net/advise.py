"""The strategy advisor: which of the four transfer-learning cases applies, and the job that follows.

Two facts decide how to fine-tune: the size of the new dataset and its similarity to the
pretraining data.

- small, similar: a linear classifier on the bottleneck features (everything below it frozen);
- large, similar: fine-tune the whole net but its first block, at a tenth of the original rate;
- small, different: a classifier on features of earlier layers (frozen up to the middle of the trunk);
- large, different: fine-tune everything, longer and at the original learning rate.

The freeze points come from the net's TRAIN data flow, not from layer names: the classifier is
found by :func:`caffegen.net.classaxis.find_classifiers`, the bottleneck is the layer whose output reaches
it through parameter-free layers, and block boundaries are the layers every path from the data
to the classifier goes through.
"""

from dataclasses import asdict, dataclass

from caffegen.defaults import FINE_TUNE_LR, HEAD_LR_MULT
from caffegen.errors import CaffegenError
from caffegen.io.quoting import sh_command
from caffegen.net.classaxis import find_classifiers
from caffegen.net.layers import learnable_blob_count, num_output_param
from caffegen.net.netview import TRAIN, NetView

# A dataset is small below these counts. The total comes from the rule of thumb of the fine-tuning
# notes we follow (wydbyxr, "训练过程--fineturn微调", CSDN, 2018): with fewer than a thousand images,
# train a linear classifier on the bottleneck features; with a few thousand, fine-tuning does better.
# The notes give no count per class: caffegen reads their thousand as a ten-class task's, 100 a class.
SMALL_DATASET_IMAGES = 1000
SMALL_DATASET_PER_CLASS = 100
SIMILARITIES = ("high", "low")
# The learning rate the BVLC reference models were trained with; fine-tuning uses a tenth of it.
ORIGINAL_LR = 10 * FINE_TUNE_LR
NET, WEIGHTS, DATA, RUN_DIR = "NET.prototxt", "WEIGHTS", "DATA", "RUN_DIR"


@dataclass(frozen=True)
class Case:
    """One of the four cases: when it applies, what it is called, and the job's numbers."""

    number: int
    dataset: str
    similarity: str
    title: str
    base_lr: float
    epochs: int
    head_lr_mult: float


# A small dataset makes few iterations an epoch, so it gets more epochs; case 4 trains longest.
CASES = [
    Case(1, "small", "high", "a linear classifier on the bottleneck features", FINE_TUNE_LR, 20, HEAD_LR_MULT),
    Case(2, "large", "high", "fine-tune the whole net at a small learning rate", FINE_TUNE_LR, 10, HEAD_LR_MULT),
    Case(3, "small", "low", "a classifier on features of earlier layers", FINE_TUNE_LR, 20, HEAD_LR_MULT),
    Case(4, "large", "low", "fine-tune everything, longer and at a higher learning rate", ORIGINAL_LR, 30, 1.0),
]


@dataclass
class FreezePoints:
    """Where a net can be cut: its classifier, its bottleneck and the block boundaries below it."""

    classifier: str
    auxiliary: list
    bottleneck: str
    block_ends: list

    def middle(self):
        """The block boundary around the middle of the trunk."""
        return self.block_ends[len(self.block_ends) // 2] if self.block_ends else None


@dataclass
class Advice:
    """The case that applies to a dataset and a net, and the ``caffegen prepare`` job that follows it."""

    case: int
    title: str
    dataset: str
    similarity: str
    size_rule: str
    strategy: str
    classifier: str
    bottleneck: str
    freeze_upto: str
    base_lr: float
    epochs: int
    head_lr_mult: float
    command: list

    @property
    def command_line(self):
        """The command as one shell line."""
        return sh_command(*self.command)

    def to_json(self):
        """The advice as a JSON-ready dict."""
        return {**asdict(self), "command_line": self.command_line}


def advise(net, train_images, similarity, classes=None, net_path=None, weights=None, data=None):
    """The :class:`Advice` for fine-tuning ``net`` on ``train_images`` images of ``similarity`` high or low."""
    if similarity not in SIMILARITIES:
        raise CaffegenError(f"--similarity must be high or low, got '{similarity}'")
    dataset, size_rule = dataset_size(train_images, classes)
    case = next(case for case in CASES if (case.dataset, case.similarity) == (dataset, similarity))
    view = NetView(net, TRAIN, path=net_path)
    points = find_freeze_points(view)
    freeze_upto, strategy = STRATEGIES[case.number](view, points, case)
    command = prepare_command(net_path or NET, weights or WEIGHTS, data or DATA, freeze_upto, case)
    return Advice(case.number, case.title, dataset, similarity, size_rule, strategy, points.classifier,
                  points.bottleneck, freeze_upto, case.base_lr, case.epochs, case.head_lr_mult, command)


def dataset_size(train_images, classes=None):
    """("small" or "large", the rule that decided it, in words)."""
    if train_images < 1:
        raise CaffegenError(f"--train-images must be at least 1, got {train_images}")
    if classes is not None and classes < 2:
        raise CaffegenError(f"--classes must be at least 2 (a classifier tells classes apart), got {classes}")
    if classes is not None and classes > train_images:
        raise CaffegenError(f"{train_images} training images cannot cover {classes} classes")
    if train_images < SMALL_DATASET_IMAGES:
        return "small", f"{train_images} training images, fewer than {SMALL_DATASET_IMAGES}"
    if classes is not None and train_images / classes < SMALL_DATASET_PER_CLASS:
        return "small", (f"{train_images} training images in {classes} classes, "
                         f"fewer than {SMALL_DATASET_PER_CLASS} a class")
    per_class = f" ({train_images // classes} a class)" if classes is not None else ""
    return "large", f"{train_images} training images{per_class}, at least {SMALL_DATASET_IMAGES}"


def find_freeze_points(view):
    """The classifier, bottleneck and block boundaries of the net in ``view`` (its TRAIN phase)."""
    classifiers = [name for name in find_classifiers(view.net, view.path) if name in view]
    if not classifiers:
        raise CaffegenError("no classifier found: no Softmax or SoftmaxWithLoss in the TRAIN phase is fed "
                            "by an InnerProduct or Convolution; the advisor needs one to place the freeze", view.path)
    classifier = max(classifiers, key=lambda name: len(view.ancestors(name)))
    bottleneck = bottleneck_of(view, classifier)
    ends = block_ends(view, classifier, bottleneck)
    return FreezePoints(classifier, [name for name in classifiers if name != classifier], bottleneck, ends)


def bottleneck_of(view, classifier):
    """The layer whose output feeds ``classifier`` through parameter-free layers: the features it classifies."""
    sources = view.sources(classifier)
    if not sources:
        raise CaffegenError(f"classifier '{classifier}' has no bottom, so Caffe would reject it: give it the "
                            "features it classifies", view.path)
    current = sources[0]
    while current is not None:
        layer = view.layer(current)
        if not layer.bottom:
            break
        if not _in_place(layer) and (learnable_blob_count(layer) != 0 or _is_merge(view, current)):
            return current
        current = view.sources(current)[0]
    raise CaffegenError(f"classifier '{classifier}' reads the net's input directly: there are no pretrained "
                        "features to reuse", view.path)


def block_ends(view, classifier, bottleneck):
    """The block boundaries below ``bottleneck``, in order: layers every path from the data to ``classifier`` crosses.

    In a net of branching blocks (Inception, residual, fire modules) they are the merges that close
    each block; in a plain chain, the last learnable layer of each block (see :func:`_chain_block_ends`).
    """
    cuts = [name for name in _cut_points(view, classifier) if not _in_place(view.layer(name))]
    below = view.index(bottleneck)
    merges = [name for name in cuts if _is_merge(view, name) and view.index(name) < below]
    return merges or [name for name in _chain_block_ends(view, cuts) if view.index(name) < below]


def _chain_block_ends(view, cuts):
    """The last learnable layer of each block of a chain: a layer with a ``num_output`` and the per-channel
    layers after it (BatchNorm, Scale; in place or not). A depthwise convolution opens no block of its own:
    only the convolution after it mixes its channels.
    """
    ends = []
    for name in cuts:
        layer = view.layer(name)
        if not learnable_blob_count(layer) or _is_depthwise(layer):
            continue
        if num_output_param(layer) is None and ends:
            ends[-1] = name
        else:
            ends.append(name)
    return ends


def _cut_points(view, classifier):
    """The ancestors of ``classifier`` that no data-flow edge towards it jumps over, in order."""
    members = view.ancestors(classifier) | {classifier}
    jumped = set()
    for name in members:
        end = view.index(name)
        for source in view.sources(name):
            start = -1 if source is None else view.index(source)
            jumped.update(range(start + 1, end))
    return [layer.name for i, layer in enumerate(view.layers)
            if layer.name in members and layer.name != classifier and i not in jumped]


def _in_place(layer):
    return len(layer.bottom) == 1 and list(layer.bottom) == list(layer.top)


def _is_merge(view, name):
    """Whether layer ``name`` joins several branches (a Concat, an Eltwise)."""
    return len(set(view.sources(name))) > 1


def _is_depthwise(layer):
    """Whether ``layer`` is a convolution with one output channel per group."""
    param = layer.convolution_param
    return layer.type == "Convolution" and param.group > 1 and param.group == param.num_output


def trained_layers(view, freeze_upto, classifier):
    """Learnable layers that ``classifier`` depends on and a freeze up to ``freeze_upto`` leaves learning."""
    frozen = view.ancestors(freeze_upto) | {freeze_upto} | set(view.inplace_followers(freeze_upto))
    ancestors = view.ancestors(classifier)
    return [layer.name for layer in view.layers
            if layer.name in ancestors and layer.name not in frozen and learnable_blob_count(layer)]


def _auxiliary_note(points):
    if not points.auxiliary:
        return ""
    return (f" The auxiliary classifiers ({', '.join(points.auxiliary)}) keep learning on the frozen features;"
            " they only feed their own losses.")


def _linear_classifier(view, points, case):
    strategy = (f"With so few images, fine-tuning the trunk would overfit: use the pretrained net as a fixed "
                f"feature extractor. Freeze everything up to the bottleneck '{points.bottleneck}' and train only "
                f"the new classifier '{points.classifier}' on its features. The frozen trunk computes the same "
                f"features for an image in every epoch, so they are worth caching: --cache-features pushes the "
                f"images through the frozen trunk once." + _auxiliary_note(points))
    return points.bottleneck, strategy


def _fine_tune_gently(view, points, case):
    first = points.block_ends[0] if points.block_ends else None
    keep = (f"Keep the first block (up to '{first}') frozen, its edge and colour filters are generic, and let "
            f"the rest learn" if first else "Let every layer learn")
    strategy = (f"With this many images, fine-tuning does not overfit. {keep} at a tenth of the original learning "
                f"rate, {case.base_lr:g}, so that the pretrained weights move little; the new classifier "
                f"'{points.classifier}' learns {case.head_lr_mult:g}× faster.")
    return first, strategy


def _earlier_features(view, points, case):
    middle = points.middle()
    if middle is None:
        raise CaffegenError(f"no block boundary below the bottleneck '{points.bottleneck}': the trunk is one "
                            "block, so there are no earlier features to train on", view.path)
    trained = trained_layers(view, middle, points.classifier)
    after = f"the {len(trained)} learnable layers after it ({_span(trained)}) with " if trained else ""
    strategy = (f"The top layers of the trunk are specific to the pretraining task, and there are too few images "
                f"to re-learn all of them: keep the generic features of earlier layers. Freeze up to '{middle}', "
                f"a block boundary around the middle of the trunk, and train {after}the new classifier "
                f"'{points.classifier}' at {case.head_lr_mult:g}× the rate." + _auxiliary_note(points))
    return middle, strategy


def _fine_tune_everything(view, points, case):
    strategy = (f"The data differ from the pretraining data, so every layer has to adapt, and there are enough "
                f"images for it: fine-tune everything, the new classifier '{points.classifier}' included, "
                f"starting from the pretrained weights (they still converge faster than random ones) at the "
                f"original learning rate, {case.base_lr:g}, for {case.epochs} epochs. With an ImageNet-sized "
                f"dataset, a million images or more, training from scratch is an option too.")
    return None, strategy


def _span(names):
    return names[0] if len(names) == 1 else f"{names[0]} … {names[-1]}"


STRATEGIES = {1: _linear_classifier, 2: _fine_tune_gently, 3: _earlier_features, 4: _fine_tune_everything}


def prepare_command(net_path, weights, data, freeze_upto, case):
    """The ``caffegen prepare`` command line (as a list) that runs ``case`` with its freeze point."""
    command = ["caffegen", "prepare", "--net", str(net_path), "--weights", str(weights), "--data", str(data)]
    if freeze_upto:
        command += ["--freeze-upto", freeze_upto]
    return command + ["--base-lr", f"{case.base_lr:g}", "--epochs", str(case.epochs),
                      "--head-lr-mult", f"{case.head_lr_mult:g}", "-o", RUN_DIR]
