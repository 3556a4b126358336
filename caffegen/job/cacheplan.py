"""The plan of a cached-features run: which layers form the frozen trunk, which blob the head reads, how big.

When the lower layers of a job are frozen, ``caffe train`` recomputes the same trunk outputs for
every image in every epoch. ``prepare --cache-features`` computes them once instead; this module
works out, without running anything, what that means for a run directory (:func:`plan_cache`):
the trunk in the TRAIN data flow (the data layer, the frozen layers and the parameter-free layers
fed only by them), the one blob the trainable layers read from it, its shape and the size of the
cache. :mod:`caffegen.run.cache` carries the plan out.

What a one-time cache cannot keep is refused (:func:`check_cacheable`), because the head would learn
from other features than the uncached job:

- ``mirror: true`` in the TRAIN data layer (a fresh random flip at every read);
- ``crop_size`` in the TRAIN data layer unless the images are resized to exactly the crop (a fresh
  random crop at every read);
- a ``Dropout`` inside the trunk (a fresh random mask at every iteration);
- a frozen ``BatchNorm`` without ``use_global_stats: true`` (batch statistics in training);
- a data layer other than ``ImageData``, more than one blob between trunk and head, nothing frozen,
  or frozen layers with no weights in the base model.

Warned about, because they are random in the uncached job as well: ``mirror: true`` in the TEST data
layer (the cache keeps one flip per validation image, as one uncached validation pass would).
Harmless and handled: ``shuffle`` (the head's ``HDF5Data`` shuffles the chunks and the rows in each;
without shuffle both read the images in list order), and Dropout layers after the last frozen layer
with parameters, which move into the head and draw fresh masks on the cached features.
"""

from dataclasses import dataclass, field, replace
from pathlib import Path

from caffegen.errors import CaffegenError
from caffegen.io.caffemodel import read_caffemodel
from caffegen.io.lists import read_list
from caffegen.io.prototxt import read_net
from caffegen.job.rundir import RunDir
from caffegen.net.layers import DATA_TYPES, RANDOM_TYPES, is_frozen, learnable_blob_count
from caffegen.net.netview import TEST, TRAIN, NetView
from caffegen.net.shapes import format_shape, infer_shapes, product

LISTS = {TRAIN: "train", TEST: "val"}
RETRAIN_HINT = "or train without --cache-features"


@dataclass
class CachePlan:
    """What caching a run's trunk means: the layers each side runs, the cached blob, its size on disk."""

    run_dir: Path
    weights: Path  # the base weights the trunk's blobs come from
    engine: str  # what computes the features
    store_root: Path  # the folder of stores shared with other runs, or None: the run's own features/
    net: object  # the run's train_val NetParameter
    views: dict  # {phase: NetView}
    data_layers: dict  # {phase: the ImageData layer}
    extracted: dict  # {phase: names of the layers the trunk net runs, data layer first}
    head: list  # names of the train_val layers the head net keeps, in order
    boundary: str  # the blob the head reads from the trunk
    label: str
    feature_shape: tuple  # of one image
    images: dict  # {"train": count, "val": count}
    param_shapes: dict  # {layer name: [blob shapes]} as Caffe shapes them
    multiply_adds: dict  # {layer name: forward multiply-adds per image, None when unknown}
    warnings: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    input_shape: tuple = None  # of the deploy net, (N, C, H, W)
    cache_batch: int = None  # the extraction's mini-batch from --cache-batch; None: chosen from the memory estimate

    @property
    def trunk_names(self):
        """The names of every layer the trunk nets run, both phases, in order."""
        return unique(sum(self.extracted.values(), []))

    @property
    def mean_file(self):
        """The mean file the data layers subtract, in the run directory, or None."""
        names = {layer.transform_param.mean_file for layer in self.data_layers.values()} - {""}
        return self.run_dir / names.pop() if names else None

    @property
    def bytes_per_image(self):
        """Bytes one image takes in the cache: its float32 features and its label."""
        return 4 * (product(self.feature_shape) + 1)

    @property
    def bytes(self):
        """Bytes of the whole cache, training and validation images together (file headers aside)."""
        return self.bytes_per_image * sum(self.images.values())

    def moved_to(self, run):
        """This plan for :class:`RunDir` ``run``, the directory it was worked out in now in its place: the paths
        change, nothing read from the files does."""
        return replace(self, run_dir=run.path, weights=run.weights(), store_root=run.feature_store)

    def describe(self):
        """One line for the user: what is cached, and how much disk it takes."""
        sizes = ", ".join(f"{subset} {_megabytes(self.bytes_per_image * count)}"
                          for subset, count in self.images.items())
        return (f"caching '{self.boundary}' ({format_shape(self.feature_shape)} float32 per image) for "
                f"{sum(self.images.values())} images: {_megabytes(self.bytes)} ({sizes})")


def _megabytes(count):
    return f"{count / 1e6:.1f} MB"


# --- what the cache may hold -------------------------------------------------------------------


def trunk_layers(view):
    """Names of the data layer and of the frozen or parameter-free layers of ``view`` fed only by the trunk."""
    trunk = set()
    for layer in view.layers:
        if layer.type in DATA_TYPES and not layer.bottom:
            trunk.add(layer.name)
        elif layer.bottom and layer.top and _fixed(layer) and all(
                source in trunk for source in view.sources(layer.name)):
            trunk.add(layer.name)
    return trunk


def _fixed(layer):
    return is_frozen(layer) or learnable_blob_count(layer) == 0


def head_side_tail(view, trunk):
    """Random trunk layers that no frozen layer with parameters depends on, with what follows them.

    They run in the head, on the cached features, exactly as they would without the cache.
    """
    parametric = {name for name in trunk if learnable_blob_count(view.layer(name))}
    below = set().union(*(view.ancestors(name) for name in parametric)) | parametric
    moved = set()
    for layer in view.layers:
        if layer.name in trunk and layer.name not in below and (
                layer.type in RANDOM_TYPES or any(source in moved for source in view.sources(layer.name))):
            moved.add(layer.name)
    return moved


def check_cacheable(net, path=None):
    """Refuse what a one-time cache would freeze of the TRAIN phase's randomness; return harmless warnings."""
    warnings = []
    for phase in (TRAIN, TEST):
        warnings += _check_data_layer(data_layer(NetView(net, phase, path=path), path), phase, path)
    view = NetView(net, TRAIN, path=path)
    trunk = trunk_layers(view)
    for name in sorted(trunk - head_side_tail(view, trunk), key=view.index):
        _check_trunk_layer(view.layer(name), path)
    return warnings


def data_layer(view, path):
    """The one ImageData layer of ``view`` with images and labels, as caffegen prepare writes it."""
    layers = [layer for layer in view.layers if layer.type in DATA_TYPES]
    if len(layers) != 1 or layers[0].type != "ImageData" or len(layers[0].top) != 2:
        found = ", ".join(f"{layer.name} ({layer.type})" for layer in layers) or "none"
        raise CaffegenError(f"--cache-features needs one ImageData layer with images and labels in the {view.phase} "
                            f"phase, as caffegen prepare writes; found {found}", path)
    return layers[0]


def _check_data_layer(layer, phase, path):
    transform, params = layer.transform_param, layer.image_data_param
    if phase == TEST:
        return [f"mirror: true in the TEST data layer '{layer.name}': the cache keeps one random flip of each "
                "validation image, as one uncached validation pass would"] if transform.mirror else []
    if transform.mirror:
        raise CaffegenError(f"mirror: true in the TRAIN data layer '{layer.name}': Caffe flips each image at random "
                            "every time it reads it, but a one-time cache would keep one mirrored or unmirrored "
                            f"version of each image for every epoch; remove it {RETRAIN_HINT}", path)
    crop = transform.crop_size
    if crop and (params.new_height, params.new_width) != (crop, crop):
        raise CaffegenError(f"crop_size: {crop} in the TRAIN data layer '{layer.name}': Caffe takes a new random "
                            f"{crop}×{crop} crop of each image every time it reads it, but a one-time cache would "
                            f"keep one crop per image; resize the images to the crop (--resize {crop},{crop}) "
                            f"{RETRAIN_HINT}", path)
    return []


def _check_trunk_layer(layer, path):
    if layer.type in RANDOM_TYPES:
        raise CaffegenError(f"{layer.type} '{layer.name}' is inside the frozen trunk: in training it draws a new "
                            "random mask at every iteration, so the frozen layers after it pass on different features "
                            "each time, but a one-time cache would keep its noise-free output; remove the layer, "
                            f"freeze only up to a layer before it, {RETRAIN_HINT}", path)
    if layer.type == "BatchNorm" and not layer.batch_norm_param.use_global_stats:
        raise CaffegenError(f"BatchNorm '{layer.name}' is frozen without use_global_stats: true, so in training it "
                            "normalises with each batch's statistics and keeps updating its averages, which a one-time "
                            f"cache cannot follow; freeze it with caffegen freeze, {RETRAIN_HINT}", path)


# --- the plan ----------------------------------------------------------------------------------


def plan_cache(run):
    """Find the trunk, the cached blob and the cache's size for a prepared run (a :class:`RunDir` or its path)."""
    run = run if isinstance(run, RunDir) else RunDir(run)
    run_dir = run.path
    path = run.train_val
    net = read_net(path).net
    warnings = check_cacheable(net, path)
    views = {phase: NetView(net, phase, path=path) for phase in (TRAIN, TEST)}
    trunk, moved = _trunk(views, path)
    label = _label(views, path)
    boundary, source = _boundary(views, trunk, label, path)
    extracted = {phase: [layer.name for layer in view.layers
                         if layer.name in (view.ancestors(source) | {source}) & trunk]
                 for phase, view in views.items()}
    shape, param_shapes, multiply_adds = _feature_shape(views, boundary, source, run.input_shape, path)
    head = [layer.name for layer in net.layer if layer.type not in DATA_TYPES and layer.name not in trunk]
    data = {phase: data_layer(view, path) for phase, view in views.items()}
    images = {LISTS[phase]: _count_lines(run_dir / f"{LISTS[phase]}.txt") for phase in (TRAIN, TEST)}
    plan = CachePlan(run_dir, run.weights(), run.engine, run.feature_store, net, views, data, extracted, unique(head),
                     boundary, label, shape, images, param_shapes, multiply_adds, warnings,
                     input_shape=tuple(run.input_shape), cache_batch=run.cache_batch)
    if moved:
        names = ", ".join(sorted(moved, key=views[TRAIN].index))
        plan.notes.append(f"{names} after the last frozen layer run in the head, drawing fresh random masks on the "
                          "cached features at every iteration, as without the cache")
    _check_trunk_weights(plan)
    return plan


def _trunk(views, path):
    """Names of the trunk layers (both phases' data layers included) and of the random tail moved to the head."""
    trunks = {phase: trunk_layers(view) for phase, view in views.items()}
    inner = {phase: {name for name in names if views[phase].layer(name).type not in DATA_TYPES}
             for phase, names in trunks.items()}
    differing = sorted(inner[TRAIN] ^ inner[TEST])
    if differing:
        raise CaffegenError(f"the frozen trunk differs between the TRAIN and TEST phases ({', '.join(differing)}); "
                            f"give both phases the same frozen layers {RETRAIN_HINT}", path)
    if not any(learnable_blob_count(views[TRAIN].layer(name)) for name in inner[TRAIN]):
        raise CaffegenError("nothing is frozen, so the cache would only hold the images; freeze the lower layers "
                            "(--freeze-upto LAYER) to cache their output", path)
    moved = head_side_tail(views[TRAIN], trunks[TRAIN])
    return (trunks[TRAIN] | trunks[TEST]) - moved, moved


def _label(views, path):
    tops = {tuple(data_layer(view, path).top) for view in views.values()}
    if len(tops) != 1:
        raise CaffegenError("the TRAIN and TEST data layers must name their images and labels alike for "
                            "--cache-features", path)
    return tops.pop()[1]


def _boundary(views, trunk, label, path):
    """(blob, producing layer) of the one trunk output the trainable layers read, the label aside."""
    read = {}
    for view in views.values():
        for layer in view.layers:
            if layer.name in trunk:
                continue
            for blob, source in zip(layer.bottom, view.sources(layer.name)):
                if source in trunk and blob != label:
                    read.setdefault((blob, source), layer.name)
    if not read:
        raise CaffegenError("the trainable layers read nothing from the frozen trunk; nothing to cache", path)
    if len(read) > 1:
        listed = ", ".join(f"'{blob}' (by {reader})" for (blob, _), reader in read.items())
        raise CaffegenError(f"the trainable layers read {len(read)} blobs from the frozen trunk: {listed}; "
                            "--cache-features caches one: freeze up to a layer whose output feeds the whole head, "
                            f"{RETRAIN_HINT}", path)
    return next(iter(read))


def _feature_shape(views, boundary, source, input_shape, path):
    """The cached blob's shape per image (the same in both phases), the learnable blobs' shapes, and each TRAIN
    layer's forward multiply-adds per image (None where unknown)."""
    shapes, param_shapes, multiply_adds = set(), {}, {}
    for phase, view in views.items():
        results = infer_shapes(view, input_shape)
        if phase == TRAIN:
            batch = next(iter(results[0].tops.values()))[0]
            multiply_adds = {result.name: None if result.multiply_adds is None else result.multiply_adds / batch
                             for result in results}
        produced = next(result for result in results if result.name == source)
        shape = produced.tops.get(boundary)
        if shape is None or None in shape or len(shape) > 4:
            raise CaffegenError(f"cannot cache '{boundary}' of shape {format_shape(shape)}: caffegen needs its size "
                                f"and Caffe's HDF5Output stores at most 4 axes; {RETRAIN_HINT}", path)
        shapes.add(tuple(shape[1:]))
        param_shapes.update((result.name, result.params) for result in results if result.params)
    if len(shapes) != 1:
        raise CaffegenError(f"one image's '{boundary}' has different shapes in the TRAIN and TEST phases "
                            f"({', '.join(map(format_shape, shapes))}); give both data layers the same geometry", path)
    return shapes.pop(), param_shapes, multiply_adds


def _check_trunk_weights(plan):
    model = read_caffemodel(plan.weights)
    missing = unique(name for phase, names in plan.extracted.items() for name in names
                      if learnable_blob_count(plan.views[phase].layer(name)) and not stored(model, name))
    if missing:
        raise CaffegenError(f"frozen layer(s) {', '.join(missing)} have no weights here: they would keep random "
                            f"filler values that differ between the cache and the final model; {RETRAIN_HINT}",
                            plan.weights)


def stored(model, name):
    layer = model.layer(name)
    return layer is not None and bool(layer.blobs)


def _count_lines(path):
    if not path.is_file():
        raise CaffegenError(f"missing {path.name}: the run directory is incomplete", path.parent)
    return len(read_list(path))


def unique(names):
    return list(dict.fromkeys(names))


