"""Cached trunk features: push every image through the frozen trunk once, then train only the head.

When the lower layers of a job are frozen, ``caffe train`` recomputes the same trunk outputs for
every image in every epoch. ``prepare --cache-features`` computes them once instead:

1. :func:`plan_cache` finds the trunk in the TRAIN data flow (the data layer, the frozen layers and
   the parameter-free layers fed only by them) and the one blob the trainable layers read from it,
   and works out its shape and the size of the cache before anything runs;
2. :func:`run_cached` runs the trunk over train.txt and val.txt with ``caffe test`` into float32
   HDF5 files under ``features/``, one process per chunk of at most 256 images;
3. it trains a head net (``HDF5Data`` on those files, then the trainable layers, loss and accuracy)
   with ``caffe train`` and the run's own schedule;
4. it writes ``final.caffemodel``: the trunk's blobs from the base weights and the head's from
   the head's last snapshot, which ``deploy.prototxt`` loads like the model of an uncached run.

Why one ``caffe test`` per chunk: Caffe 1.0's ``HDF5Output`` layer creates its datasets in its file
at every forward pass, so a second batch fails with "unable to create dataset" (BVLC issue #1726).
``extract_features`` writes LMDB datums without the labels, and a ``Data`` layer cannot shuffle,
so the head could not be trained as the uncached job is. One batch per process keeps memory bounded;
the trunk's blobs are first written to ``features/trunk.caffemodel`` so each process loads only them.

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

import hashlib
import json
import math
import os
import random
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from caffegen.run.caffelog import parse_log
from caffegen.io.caffemodel import read_caffemodel, write_caffemodel
from caffegen.errors import CaffegenError
from caffegen.net.layers import is_frozen, learnable_blob_count
from caffegen.run.locate import find_caffe
from caffegen.net.netview import PHASE_NUMBERS, TEST, TRAIN, NetView
from caffegen.io.prototxt import read_net, read_solver, to_text, write_atomic
from caffegen.job.rundir import check_labels, choose_launch_device, load_manifest
from caffegen.run.runner import INTERRUPTED, RESULT, result_summary, run_caffe_train
from caffegen.io.schema import BVLC
from caffegen.net.shapes import format_shape, infer_shapes, product
from caffegen.net.wiring import DATA_TYPES

FEATURES = "features"
TRUNK_WEIGHTS = f"{FEATURES}/trunk.caffemodel"
HEAD_WEIGHTS = f"{FEATURES}/head_init.caffemodel"
CACHE_RECORD = f"{FEATURES}/cache.json"
EXTRACT_LOG = f"{FEATURES}/extract.log"
HEAD_NET = "head_train_val.prototxt"
HEAD_SOLVER = "head_solver.prototxt"
HEAD_SNAPSHOTS = "snapshots/head"
FINAL_MODEL = "final.caffemodel"
CHUNK_IMAGES = 256
# The dataset names Caffe's HDF5Output layer writes; HDF5Data reads datasets named as its tops.
FEATURE_DATASET, LABEL_DATASET = "data", "label"
RANDOM_TYPES = {"Dropout"}
LISTS = {TRAIN: "train", TEST: "val"}
RETRAIN_HINT = "or train without --cache-features"


@dataclass
class CachePlan:
    """What caching a run's trunk means: the layers each side runs, the cached blob, its size on disk."""

    run_dir: Path
    net: object  # the run's train_val NetParameter
    views: dict  # {phase: NetView}
    extracted: dict  # {phase: names of the layers the trunk net runs, data layer first}
    head: list  # names of the train_val layers the head net keeps, in order
    boundary: str  # the blob the head reads from the trunk
    label: str
    feature_shape: tuple  # of one image
    images: dict  # {"train": count, "val": count}
    param_shapes: dict  # {layer name: [blob shapes]} as Caffe shapes them
    warnings: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    @property
    def bytes_per_image(self):
        """Bytes one image takes in the cache: its float32 features and its label."""
        return 4 * (product(self.feature_shape) + 1)

    @property
    def bytes(self):
        """Bytes of the whole cache, training and validation images together (file headers aside)."""
        return self.bytes_per_image * sum(self.images.values())

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
        warnings += _check_data_layer(_data_layer(NetView(net, phase, path=path), path), phase, path)
    view = NetView(net, TRAIN, path=path)
    trunk = trunk_layers(view)
    for name in sorted(trunk - head_side_tail(view, trunk), key=view.index):
        _check_trunk_layer(view.layer(name), path)
    return warnings


def _data_layer(view, path):
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


def plan_cache(run_dir):
    """Find the trunk, the cached blob and the cache's size for a prepared run directory."""
    run_dir = Path(run_dir)
    path = run_dir / "train_val.prototxt"
    net = read_net(path).net
    warnings = check_cacheable(net, path)
    views = {phase: NetView(net, phase, path=path) for phase in (TRAIN, TEST)}
    trunk, moved = _trunk(views, path)
    label = _label(views, path)
    boundary, source = _boundary(views, trunk, label, path)
    extracted = {phase: [layer.name for layer in view.layers
                         if layer.name in (view.ancestors(source) | {source}) & trunk]
                 for phase, view in views.items()}
    shape, param_shapes = _feature_shape(views, boundary, source, _input_shape(run_dir), path)
    head = [layer.name for layer in net.layer if layer.type not in DATA_TYPES and layer.name not in trunk]
    plan = CachePlan(run_dir, net, views, extracted, _unique(head), boundary, label, shape,
                     {LISTS[phase]: _count_lines(run_dir / f"{LISTS[phase]}.txt") for phase in (TRAIN, TEST)},
                     param_shapes, warnings)
    if moved:
        names = ", ".join(sorted(moved, key=views[TRAIN].index))
        plan.notes.append(f"{names} after the last frozen layer run in the head, drawing fresh random masks on the "
                          "cached features at every iteration, as without the cache")
    _check_trunk_weights(plan, _weights(run_dir))
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
    tops = {tuple(_data_layer(view, path).top) for view in views.values()}
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


def _input_shape(run_dir):
    """The image geometry of the run's deploy net (N, C, H, W): what the data layers cannot tell alone."""
    deploy = read_net(run_dir / "deploy.prototxt").net
    inputs = [layer for layer in deploy.layer if layer.type == "Input"]
    return tuple(inputs[0].input_param.shape[0].dim) if inputs else None


def _feature_shape(views, boundary, source, input_shape, path):
    """The cached blob's shape per image (the same in both phases) and the learnable blobs' shapes."""
    shapes, param_shapes = set(), {}
    for view in views.values():
        results = infer_shapes(view, input_shape)
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
    return shapes.pop(), param_shapes


def _check_trunk_weights(plan, weights):
    model = read_caffemodel(weights)
    missing = _unique(name for phase, names in plan.extracted.items() for name in names
                      if learnable_blob_count(plan.views[phase].layer(name)) and not _stored(model, name))
    if missing:
        raise CaffegenError(f"frozen layer(s) {', '.join(missing)} have no weights here: they would keep random "
                            f"filler values that differ between the cache and the final model; {RETRAIN_HINT}", weights)


def _stored(model, name):
    layer = model.layer(name)
    return layer is not None and bool(layer.blobs)


def _weights(run_dir):
    weights = run_dir / load_manifest(run_dir)["weights"]
    if not weights.is_file():
        raise CaffegenError("the pretrained weights named in the manifest are missing", weights)
    return weights


def _count_lines(path):
    if not path.is_file():
        raise CaffegenError(f"missing {path.name}: the run directory is incomplete", path.parent)
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def _unique(names):
    return list(dict.fromkeys(names))


# --- extraction --------------------------------------------------------------------------------


@dataclass
class Chunk:
    """One ``caffe test`` run: a list of images, the trunk net on it, the HDF5 file it writes."""

    phase: str
    name: str
    lines: list

    def path(self, suffix):
        return f"{FEATURES}/{self.name}{suffix}"


def chunks(plan, seed):
    """The chunks of train.txt and val.txt, training images shuffled by ``seed`` when the job shuffles them."""
    found = []
    for phase, subset in LISTS.items():
        lines = [line for line in (plan.run_dir / f"{subset}.txt").read_text(encoding="utf-8").splitlines()
                 if line.strip()]
        if phase == TRAIN and _data_layer(plan.views[TRAIN], None).image_data_param.shuffle:
            random.Random(seed).shuffle(lines)
        count = math.ceil(len(lines) / CHUNK_IMAGES)
        found += [Chunk(phase, f"{subset}_{i:04d}", lines[i * len(lines) // count:(i + 1) * len(lines) // count])
                  for i in range(count)]
    return found


def trunk_net(plan, chunk):
    """The trunk as a net for ``caffe test``: ImageData on the chunk's list, the trunk, HDF5Output."""
    view = plan.views[chunk.phase]
    net = BVLC.NetParameter(name=f"{plan.net.name}_trunk")
    for name in plan.extracted[chunk.phase]:
        layer = net.layer.add()
        layer.CopyFrom(view.layer(name))
        layer.ClearField("include")
        layer.ClearField("exclude")
    params = net.layer[0].image_data_param
    params.source, params.batch_size, params.shuffle, params.rand_skip = chunk.path(".txt"), len(chunk.lines), False, 0
    output = net.layer.add(name="cache", type="HDF5Output", bottom=[plan.boundary, plan.label])
    output.hdf5_output_param.file_name = chunk.path(".h5")
    return net


def extract(plan, caffe, gpu=None, echo=None, show_progress=None, seed=1):
    """Run the trunk over every image once; return whether cached features were reused."""
    echo = echo or (lambda line: None)
    run_dir, weights = plan.run_dir, _weights(plan.run_dir)
    (run_dir / FEATURES).mkdir(exist_ok=True)
    work = chunks(plan, seed)
    files = chunk_files(plan, work)
    key = _cache_key(run_dir, work, files, weights)
    if _reusable(run_dir, key, work):
        echo(f"reusing the cached features in {run_dir / FEATURES}")
        return True
    (run_dir / CACHE_RECORD).unlink(missing_ok=True)
    for name, text in files.items():
        write_atomic(run_dir / name, text)
    write_trimmed_weights(weights, run_dir / TRUNK_WEIGHTS, _unique(sum(plan.extracted.values(), [])),
                          plan.param_shapes)
    (run_dir / EXTRACT_LOG).write_text("", encoding="utf-8")
    with tqdm(total=sum(plan.images.values()), unit="img", desc="trunk features",
              disable=None if show_progress is None else not show_progress, dynamic_ncols=True) as bar:
        for chunk in work:
            _run_chunk(caffe, chunk, run_dir, gpu)
            bar.update(len(chunk.lines))
    record = {"key": key, "boundary": plan.boundary, "feature_shape": plan.feature_shape, "bytes": plan.bytes}
    write_atomic(run_dir / CACHE_RECORD, json.dumps(record) + "\n")
    return False


def chunk_files(plan, work):
    """{path in the run directory: text}: each chunk's list and trunk net, and the head's lists of HDF5 files."""
    files = {chunk.path(".prototxt"): to_text(trunk_net(plan, chunk)) for chunk in work}
    files.update((chunk.path(".txt"), "".join(f"{line}\n" for line in chunk.lines)) for chunk in work)
    for phase, subset in LISTS.items():
        files[f"{FEATURES}/{subset}.txt"] = "".join(f"{chunk.path('.h5')}\n" for chunk in work if chunk.phase == phase)
    return files


def _cache_key(run_dir, work, files, weights):
    """What the features depend on: the trunk nets and lists, the weights file and every image file."""
    images = [line.rpartition(" ")[0] for chunk in work for line in chunk.lines]
    stamps = [_stamp(run_dir / path) for path in [weights] + images]
    return hashlib.sha256(json.dumps([sorted(files.items()), stamps]).encode("utf-8")).hexdigest()


def _stamp(path):
    try:
        stat = path.stat()
    except OSError:
        return [str(path), None]
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def _reusable(run_dir, key, work):
    record = run_dir / CACHE_RECORD
    if not record.is_file() or json.loads(record.read_text(encoding="utf-8")).get("key") != key:
        return False
    return all((run_dir / chunk.path(".h5")).is_file() for chunk in work)


def _run_chunk(caffe, chunk, run_dir, gpu):
    """``caffe test`` of one chunk's trunk net, one iteration; its log is appended to features/extract.log."""
    command = [str(caffe), "test", "-model", chunk.path(".prototxt"), "-weights", TRUNK_WEIGHTS, "-iterations", "1"]
    if gpu is not None:
        command += ["-gpu", str(gpu)]
    (run_dir / chunk.path(".h5")).unlink(missing_ok=True)
    env = dict(os.environ, GLOG_logtostderr="1")
    done = subprocess.run(command, cwd=run_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, errors="replace")
    with (run_dir / EXTRACT_LOG).open("a", encoding="utf-8") as log:
        log.write(done.stdout)
    if done.returncode != 0:
        watcher, _ = parse_log(done.stdout.splitlines())
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        reason = watcher.diagnoses[0].message if watcher.diagnoses else (lines or ["no output"])[-1]
        raise CaffegenError(f"computing the features of {chunk.name} failed (exit code {done.returncode}): {reason}",
                            run_dir / EXTRACT_LOG)


# --- weights -----------------------------------------------------------------------------------


def write_trimmed_weights(source, target, names, param_shapes, override=None):
    """Write the blobs of layers ``names`` to ``target``, from ``override`` where it has them, else from ``source``.

    Legacy 4-axis blobs are given the shapes Caffe gives the layers' parameters, so Caffe copies them.
    """
    models = [read_caffemodel(path) for path in ((override,) if override else ()) + (source,)]
    layers = []
    for name in names:
        model = next((model for model in models if _stored(model, name)), None)
        if model is not None:
            stored = model.layer(name)
            arrays = [_shaped(array, blob, shape) for array, blob, shape in
                      zip(model.values(name), stored.blobs, param_shapes.get(name) or [None] * len(stored.blobs))]
            layers.append((BVLC.LayerParameter(name=name, type=stored.type), arrays))
    write_caffemodel(target, layers)
    return len(layers)


def _shaped(array, blob, shape):
    if blob.legacy and shape and None not in shape and product(shape) == array.size:
        return array.reshape(shape)
    return array


# --- the head ----------------------------------------------------------------------------------


def head_net(plan):
    """The train_val net with its trunk replaced by HDF5Data layers on the cached features."""
    net = BVLC.NetParameter(name=plan.net.name)
    for phase, subset in LISTS.items():
        data = _data_layer(plan.views[phase], None)
        layer = net.layer.add(name=data.name, type="HDF5Data", top=[FEATURE_DATASET, LABEL_DATASET])
        layer.include.add().phase = PHASE_NUMBERS[phase]
        layer.hdf5_data_param.source = f"{FEATURES}/{subset}.txt"
        layer.hdf5_data_param.batch_size = data.image_data_param.batch_size
        if phase == TRAIN and data.image_data_param.shuffle:
            layer.hdf5_data_param.shuffle = True
    # HDF5Output stores 4 axes under fixed names: give the head its blobs back under their own names and shapes.
    if plan.boundary != FEATURE_DATASET:
        _add_reshape(net, FEATURE_DATASET, plan.boundary, (0,) + plan.feature_shape)
    if plan.label != LABEL_DATASET:
        _add_reshape(net, LABEL_DATASET, plan.label, (0,))
    for layer in plan.net.layer:
        if layer.name in plan.head and layer.type not in DATA_TYPES:
            net.layer.add().CopyFrom(layer)
    return net


def _add_reshape(net, bottom, top, dims):
    layer = net.layer.add(name=f"cached_{top}", type="Reshape", bottom=[bottom], top=[top])
    layer.reshape_param.shape.dim.extend(dims)


def head_solver(run_dir, gpu):
    """The run's solver on the head net: the same batch sizes, so the same iterations, tests and epochs."""
    solver = read_solver(run_dir / "solver.prototxt")
    for name in ("train_net", "test_net", "net_param", "train_net_param", "test_net_param"):
        solver.ClearField(name)
    solver.net = HEAD_NET
    solver.snapshot_prefix = HEAD_SNAPSHOTS
    solver.solver_mode = solver.CPU if gpu is None else solver.GPU
    return solver


def write_head(plan, gpu):
    """Write the head net, its solver and its starting weights; return the ``caffe train`` arguments."""
    run_dir = plan.run_dir
    write_atomic(run_dir / HEAD_NET, to_text(head_net(plan)))
    write_atomic(run_dir / HEAD_SOLVER, to_text(head_solver(run_dir, gpu)))
    arguments = ["train", "-solver", HEAD_SOLVER]
    if write_trimmed_weights(_weights(run_dir), run_dir / HEAD_WEIGHTS, plan.head, plan.param_shapes):
        arguments += ["-weights", HEAD_WEIGHTS]
    if gpu is not None:
        arguments += ["-gpu", str(gpu)]
    return arguments + ["-sigint_effect", "stop"]


def merge_model(plan, head_snapshot):
    """Write final.caffemodel: the trunk's blobs from the base weights, the head's from ``head_snapshot``."""
    names = _unique(layer.name for layer in plan.net.layer)
    target = plan.run_dir / FINAL_MODEL
    write_trimmed_weights(_weights(plan.run_dir), target, names, plan.param_shapes, override=head_snapshot)
    return target


# --- the whole run -----------------------------------------------------------------------------


def run_cached(run_dir, caffe, echo, show_progress=None, gpu=None):
    """Cache the trunk's features, train the head on them, and write the merged final.caffemodel.

    ``gpu`` overrides the prepared device, as ``launch --gpu`` does.
    """
    started = time.monotonic()
    run_dir = Path(run_dir).resolve()
    echo = echo or (lambda line: None)
    manifest = load_manifest(run_dir)
    caffe = find_caffe(caffe)
    device = choose_launch_device(manifest["device"], gpu, caffe, echo)
    gpu = None if device == "cpu" else device
    check_labels(run_dir)
    plan = plan_cache(run_dir)
    for line in plan.warnings + plan.notes + [plan.describe()]:
        echo(line)
    extract_started = time.monotonic()
    reused = extract(plan, caffe, gpu, echo, show_progress, _seed(run_dir))
    extracted = time.monotonic() - extract_started
    result = run_caffe_train(caffe, write_head(plan, gpu), run_dir, [], echo, show_progress)
    trained = result.seconds
    if result.final_model and result.exit_code in (0, INTERRUPTED):
        result.final_model = merge_model(plan, result.final_model)
    result.seconds = time.monotonic() - started
    timings = {"extract_seconds": round(extracted, 3), "train_seconds": round(trained, 3),
               "reused": reused, "boundary": plan.boundary, "feature_shape": list(plan.feature_shape),
               "bytes": plan.bytes}
    result.notes.append(f"trunk features: {timings['extract_seconds']:.1f} s{' (reused)' if reused else ''}; "
                        f"head training: {trained:.1f} s")
    write_atomic(run_dir / RESULT, json.dumps(dict(result_summary(result), cache=timings), indent=2) + "\n")
    return result


def _seed(run_dir):
    solver = read_solver(run_dir / "solver.prototxt")
    return solver.random_seed if solver.random_seed >= 0 else 0
