"""Cached trunk features: push every image through the frozen trunk once, then train only the head.

Carrying out a :class:`~caffegen.job.cacheplan.CachePlan`:

1. :func:`run_cached` runs the trunk over train.txt and val.txt with ``caffe test`` into float32
   HDF5 files under ``features/``, one process per chunk of at most 256 images;
2. it trains a head net (``HDF5Data`` on those files, then the trainable layers, loss and accuracy)
   with ``caffe train`` and the run's own schedule;
3. it writes ``final.caffemodel``: the trunk's blobs from the base weights and the head's from
   the head's last snapshot, which ``deploy.prototxt`` loads like the model of an uncached run.

Why one ``caffe test`` per chunk: Caffe 1.0's ``HDF5Output`` layer creates its datasets in its file
at every forward pass, so a second batch fails with "unable to create dataset" (BVLC issue #1726).
``extract_features`` writes LMDB datums without the labels, and a ``Data`` layer cannot shuffle,
so the head could not be trained as the uncached job is. One batch per process keeps memory bounded;
the trunk's blobs are first written to ``features/trunk.caffemodel`` so each process loads only them.
"""

import hashlib
import json
import math
import os
import random
import subprocess
import time
from dataclasses import dataclass

from tqdm import tqdm

from caffegen.errors import CaffegenError
from caffegen.io.caffemodel import read_caffemodel, write_caffemodel
from caffegen.io.files import write_atomic
from caffegen.io.lists import read_list
from caffegen.io.prototxt import read_solver, to_text
from caffegen.io.schema import BVLC
from caffegen.job.cacheplan import LISTS, plan_cache, stored, unique
from caffegen.net.layers import DATA_TYPES
from caffegen.net.netview import PHASE_NUMBERS, TRAIN
from caffegen.net.shapes import product
from caffegen.run.caffelog import parse_log
from caffegen.run.runner import INTERRUPTED, RESULT, result_summary, run_caffe_train

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


# --- extraction --------------------------------------------------------------------------------


@dataclass
class Chunk:
    """One ``caffe test`` run: a list of images, the trunk net on it, the HDF5 file it writes."""

    phase: str
    name: str
    lines: list  # of ListLine

    def path(self, suffix):
        return f"{FEATURES}/{self.name}{suffix}"


def chunks(plan, seed):
    """The chunks of train.txt and val.txt, training images shuffled by ``seed`` when the job shuffles them."""
    found = []
    for phase, subset in LISTS.items():
        lines = read_list(plan.run_dir / f"{subset}.txt")
        if phase == TRAIN and plan.data_layers[TRAIN].image_data_param.shuffle:
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
    run_dir, weights = plan.run_dir, plan.weights
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
    write_trimmed_weights(weights, run_dir / TRUNK_WEIGHTS, unique(sum(plan.extracted.values(), [])),
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
    files.update((chunk.path(".txt"), "".join(line.text() for line in chunk.lines)) for chunk in work)
    for phase, subset in LISTS.items():
        files[f"{FEATURES}/{subset}.txt"] = "".join(f"{chunk.path('.h5')}\n" for chunk in work if chunk.phase == phase)
    return files


def _cache_key(run_dir, work, files, weights):
    """What the features depend on: the trunk nets and lists, the weights file and every image file."""
    images = [line.path for chunk in work for line in chunk.lines]
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
        model = next((model for model in models if stored(model, name)), None)
        if model is not None:
            layer = model.layer(name)
            arrays = [_shaped(array, blob, shape) for array, blob, shape in
                      zip(model.values(name), layer.blobs, param_shapes.get(name) or [None] * len(layer.blobs))]
            layers.append((BVLC.LayerParameter(name=name, type=layer.type), arrays))
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
        data = plan.data_layers[phase]
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
    if write_trimmed_weights(plan.weights, run_dir / HEAD_WEIGHTS, plan.head, plan.param_shapes):
        arguments += ["-weights", HEAD_WEIGHTS]
    if gpu is not None:
        arguments += ["-gpu", str(gpu)]
    return arguments + ["-sigint_effect", "stop"]


def merge_model(plan, head_snapshot):
    """Write final.caffemodel: the trunk's blobs from the base weights, the head's from ``head_snapshot``."""
    names = unique(layer.name for layer in plan.net.layer)
    target = plan.run_dir / FINAL_MODEL
    write_trimmed_weights(plan.weights, target, names, plan.param_shapes, override=head_snapshot)
    return target


# --- the whole run -----------------------------------------------------------------------------


def run_cached(run, target, echo=None, show_progress=None):
    """Cache the trunk's features of :class:`RunDir` ``run``, train the head on them, and merge final.caffemodel.

    ``target`` is the Caffe to run and the device asked for, as ``launch`` resolved them.
    """
    started = time.monotonic()
    echo = echo or (lambda line: None)
    gpu = target.launch_device(run.device, echo).gpu_flag
    run.check_labels()
    plan = plan_cache(run)
    for line in plan.warnings + plan.notes + [plan.describe()]:
        echo(line)
    extract_started = time.monotonic()
    reused = extract(plan, target.caffe, gpu, echo, show_progress, _seed(run.path))
    extracted = time.monotonic() - extract_started
    result = run_caffe_train(target.caffe, write_head(plan, gpu), run.path, [], echo, show_progress)
    trained = result.seconds
    if result.final_model and result.exit_code in (0, INTERRUPTED):
        result.final_model = merge_model(plan, result.final_model)
    result.seconds = time.monotonic() - started
    timings = {"extract_seconds": round(extracted, 3), "train_seconds": round(trained, 3),
               "reused": reused, "boundary": plan.boundary, "feature_shape": list(plan.feature_shape),
               "bytes": plan.bytes}
    result.notes.append(f"trunk features: {timings['extract_seconds']:.1f} s{' (reused)' if reused else ''}; "
                        f"head training: {trained:.1f} s")
    write_atomic(run.path / RESULT, json.dumps(dict(result_summary(result), cache=timings), indent=2) + "\n")
    return result


def _seed(run_dir):
    solver = read_solver(run_dir / "solver.prototxt")
    return solver.random_seed if solver.random_seed >= 0 else 0
