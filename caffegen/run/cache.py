"""Cached trunk features: push every image through the frozen trunk once, then train only the head.

Carrying out a :class:`~caffegen.job.cacheplan.CachePlan`:

1. :func:`run_cached` runs the trunk over train.txt and val.txt with Caffe's ``extract_features``
   into float32 HDF5 files in a feature store, one process per chunk of up to 4,096 images, each
   running mini-batches (``--cache-batch``, or the most the memory estimate fits, up to
   :data:`~caffegen.defaults.CACHE_BATCH` images on the CPU): the trunk's weights
   are loaded once per chunk and peak memory depends on the net and the mini-batch, never on the
   number of images; or with OpenCV DNN (``--engine``), once its first mini-batch agreed with Caffe's;
2. it trains a head net (``HDF5Data`` on those files, then the trainable layers, loss and accuracy)
   with ``caffe train`` and the run's own schedule;
3. it writes ``final.caffemodel``: the trunk's blobs from the base weights and the head's from
   the head's last snapshot, which ``deploy.prototxt`` loads like the model of an uncached run.

A store is the run's own ``features/``, or, for runs that share one (a sweep's), a folder named by
a hash of what the features depend on: the trunk nets (layers, transforms), the image lists, the
weights' content, every image file's version and the engine; not the mini-batch, which changes
no feature. A chunk's HDF5 file appears complete or not at all, so an interrupted extraction
resumes from the chunks it finished; the store counts as done once its record is written. Runs
sharing it take turns under a file lock, so the first computes and the others reuse. A deeper
trunk may start from a shallower trunk's store. On a cluster, the shards of :func:`extract_shard`
(:mod:`caffegen.run.shards`) compute parts of the chunks at once, under a shared lock, and the
next extraction merges them into the chunks.

Why ``extract_features`` and not ``caffe test`` with ``HDF5Output``: Caffe 1.0's ``HDF5Output``
creates its datasets at every forward pass, so a second batch fails with "unable to create
dataset" (BVLC issue #1726), and one batch per process made memory grow with the chunk.
``extract_features`` stores the blobs asked for, the labels among them, in order; caffegen copies
them into chunked HDF5 a slice at a time. The trunk's blobs are first written to the store's
``trunk.caffemodel`` so each process loads only them.
"""
import functools
import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from caffegen.defaults import CACHE_BATCH, CHUNK_IMAGES
from caffegen.errors import CaffegenError
from caffegen.io.caffemodel import read_caffemodel, write_caffemodel
from caffegen.io.featuredb import feature_slices, read_feature_db, stored_attribute, write_features_h5
from caffegen.io.files import file_sha256, write_atomic
from caffegen.io.lists import ListLine, read_list
from caffegen.io.locks import waiting_lock
from caffegen.io.prototxt import read_solver, to_text
from caffegen.io.schema import BVLC
from caffegen.job.cacheplan import LISTS, plan_cache, stored, unique
from caffegen.job.memorycheck import extraction_batch
from caffegen.job.options import CAFFE, OPENCV
from caffegen.job.rundir import write_result
from caffegen.net.layers import DATA_TYPES
from caffegen.net.netview import PHASE_NUMBERS, TEST, TRAIN
from caffegen.net.shapes import product
from caffegen.run.forward import run_extract_features
from caffegen.run.opencv import caffe_input, compare_features, opencv_batch, opencv_dnn, opencv_net
from caffegen.run.runner import INTERRUPTED, result_summary, run_caffe_train
from caffegen.run.shards import COMPUTED_BY, merge_parts, remove_parts, shard_parts
from caffegen.run.target import memory_budget

FEATURES = "features"
HEAD_WEIGHTS = f"{FEATURES}/head_init.caffemodel"
# The files of a feature store besides its chunks.
STORE_WEIGHTS, STORE_RECORD, STORE_LOG, STORE_LOCK = "trunk.caffemodel", "cache.json", "extract.log", ".lock"
HEAD_NET = "head_train_val.prototxt"
HEAD_SOLVER = "head_solver.prototxt"
HEAD_SNAPSHOTS = "snapshots/head"
FINAL_MODEL = "final.caffemodel"
# The dataset names Caffe's HDF5Output layer writes; HDF5Data reads datasets named as its tops.
FEATURE_DATASET, LABEL_DATASET = "data", "label"


# --- extraction --------------------------------------------------------------------------------


@dataclass
class Chunk:
    """One ``caffe test`` run: a list of images, the trunk net on it, the HDF5 file it writes."""

    phase: str
    name: str
    lines: list  # of ListLine, with absolute image paths

    def path(self, suffix):
        """The chunk's file with ``suffix``, relative to its store."""
        return f"{self.name}{suffix}"


@dataclass
class FeatureStore:
    """A folder of one trunk's features over one image list, named by what they depend on."""

    path: Path
    key: str
    work: list  # the Chunks
    nets: dict  # {chunk name: the trunk net that computes it from the images}
    files: dict  # {name in the store: text}: the chunks' lists and trunk nets
    inputs: dict  # digests of what feeds the trunk: lists, image versions (and mean file), weights; the engine
    engine: str = None  # what computed the features, once they are: caffe or opencv

    @functools.cached_property
    def layer_digests(self):
        """{chunk name: a digest of each layer its trunk net runs before the output, the data layer first}."""
        return {name: [_digest(to_text(layer)) for layer in net.layer] for name, net in self.nets.items()}

    def complete(self):
        """Whether an extraction with this key finished here: a half-written store never counts."""
        record = self.path / STORE_RECORD
        if not record.is_file() or json.loads(record.read_text(encoding="utf-8")).get("key") != self.key:
            return False
        return all((self.path / chunk.path(".h5")).is_file() for chunk in self.work)


def feature_store(plan, seed):
    """The store of ``plan``'s features: the run's own features/, or a shared one named by its key.

    The key is what the features depend on: the trunk nets (layers and transforms) and lists, the
    weights' and the mean file's content, every image file's version, and the engine.
    """
    work = chunks(plan, seed)
    nets = {chunk.name: trunk_net(plan, chunk) for chunk in work}
    files = {chunk.path(".prototxt"): to_text(nets[chunk.name]) for chunk in work}
    files.update((chunk.path(".txt"), "".join(line.text() for line in chunk.lines)) for chunk in work)
    inputs = {
        "lists": _digest(sorted((name, text) for name, text in files.items() if name.endswith(".txt"))),
        "images": _digest([_stamp(Path(line.path)) for chunk in work for line in chunk.lines]
                          + [file_sha256(plan.mean_file) if plan.mean_file else None]),
        "weights": file_sha256(plan.weights),
        "engine": plan.engine,
    }
    key = _digest([sorted(files.items()), inputs])
    path = plan.store_root / key[:16] if plan.store_root else plan.run_dir / FEATURES
    return FeatureStore(path, key, work, nets, files, inputs)


def chunks(plan, seed):
    """The chunks of train.txt and val.txt, training images shuffled by ``seed`` when the job shuffles them."""
    found = []
    for phase, subset in LISTS.items():
        lines = [ListLine(line.number, str(plan.run_dir / line.path), line.label)
                 for line in read_list(plan.run_dir / f"{subset}.txt")]
        if phase == TRAIN and plan.data_layers[TRAIN].image_data_param.shuffle:
            random.Random(seed).shuffle(lines)
        count = math.ceil(len(lines) / CHUNK_IMAGES)
        found += [Chunk(phase, f"{subset}_{i:04d}", lines[i * len(lines) // count:(i + 1) * len(lines) // count])
                  for i in range(count)]
    return found


def trunk_net(plan, chunk):
    """The trunk as a net for ``extract_features``: ImageData on the chunk's list (batch size 1 until it runs), the trunk."""
    view = plan.views[chunk.phase]
    net = BVLC.NetParameter(name=f"{plan.net.name}_trunk")
    for name in plan.extracted[chunk.phase]:
        layer = net.layer.add()
        layer.CopyFrom(view.layer(name))
        layer.ClearField("include")
        layer.ClearField("exclude")
    params = net.layer[0].image_data_param
    params.source, params.batch_size, params.shuffle, params.rand_skip = chunk.path(".txt"), 1, False, 0
    return net


def _digest(data):
    return hashlib.sha256(json.dumps(data).encode("utf-8")).hexdigest()


def _stamp(path):
    try:
        stat = path.stat()
    except OSError:
        return [str(path), None]
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def extract(plan, target, device=None, echo=None, show_progress=None, seed=1, batch_size=CACHE_BATCH):
    """Run the trunk over every image once into its store; return (the FeatureStore, whether it was reused).

    Runs sharing a store wait for each other: the first computes, the others reuse. Chunks an
    interrupted extraction finished are kept and not computed again.
    """
    echo = echo or (lambda line: None)
    store = feature_store(plan, seed)
    store.path.mkdir(parents=True, exist_ok=True)
    with _store_lock(store, echo):
        if store.complete():
            store.engine = json.loads((store.path / STORE_RECORD).read_text(encoding="utf-8")).get("computed_by", CAFFE)
            echo(f"reusing the cached features in {store.path} (computed with {store.engine})")
            return store, True
        (store.path / STORE_RECORD).unlink(missing_ok=True)
        source = derivation(plan, store, echo)
        nets = store.nets if source is None else {chunk.name: derived_net(plan, store, source, chunk)
                                                  for chunk in store.work}
        files = store.files if source is None else _derived_files(plan, store, source)
        for name, text in files.items():
            write_atomic(store.path / name, text)
        _write_trunk(plan, store, plan.trunk_names if source is None else source.layers)
        merged = [chunk for chunk in store.work if not (store.path / chunk.path(".h5")).is_file()
                  and merge_parts(store.path, chunk, _shapes(plan))]
        if merged:
            echo(f"merged the shards' parts of {len(merged)} chunks of features")
        done = [chunk for chunk in store.work if (store.path / chunk.path(".h5")).is_file()]
        if done:
            echo(f"resuming: {len(done)} of {len(store.work)} chunks of features are already computed")
        todo = [chunk for chunk in store.work if chunk not in done]
        engine = _checked_engine(target, plan, store, nets, todo, device, batch_size, echo, derived=source is not None)
        with tqdm(total=sum(plan.images.values()), unit="img", desc="trunk features",
                  disable=None if show_progress is None else not show_progress, dynamic_ncols=True) as bar:
            bar.update(sum(len(chunk.lines) for chunk in done))
            for chunk in todo:
                _compute(target, plan, chunk, nets[chunk.name], store.path, engine, device, batch_size)
                bar.update(len(chunk.lines))
        for chunk in store.work:  # parts left of chunks computed whole
            remove_parts(store.path, chunk)
        store.engine = _stored_engine(store, CAFFE if engine is None else OPENCV, source)
        write_atomic(store.path / STORE_RECORD, json.dumps(_record(plan, store)) + "\n")
    return store, False


def _write_trunk(plan, store, layers):
    """Write the trunk's weights (of ``layers``) and the mean file into the store, where its nets read them."""
    if plan.mean_file is not None:  # the trunk nets name it as the run directory does, and run in the store
        write_atomic(store.path / plan.data_layers[TRAIN].transform_param.mean_file, plan.mean_file.read_bytes())
    write_trimmed_weights(plan.weights, store.path / STORE_WEIGHTS, layers, plan.param_shapes)


def _shapes(plan):
    """{dataset: shape of one image's values} of a chunk's HDF5 file."""
    return {FEATURE_DATASET: plan.feature_shape, LABEL_DATASET: ()}


def _stored_engine(store, computing, source=None):
    """What computed the store's chunks, as their files say (``computing`` for files that do not), and what
    computed the shallower features of ``source`` (a Source) that they were derived from."""
    engines = {stored_attribute(store.path / chunk.path(".h5"), COMPUTED_BY) or computing for chunk in store.work}
    if source is not None:
        engines.update(source.record.get("computed_by", CAFFE).split(" and "))
    return " and ".join(sorted(engines))


def extract_shard(plan, target, shard, shards, device=None, echo=None, show_progress=None, seed=1,
                  batch_size=CACHE_BATCH):
    """Compute shard ``shard`` of ``shards`` of the store's features into its parts; return (the FeatureStore,
    the images computed).

    Shards of one store run at once under a shared lock, so an unsharded extraction waits for them and
    they for it. A part already computed is kept; shards compute from the images, never from a
    shallower trunk's store. Each shard checks OpenCV against Caffe on its own first mini-batch.
    """
    echo = echo or (lambda line: None)
    store = feature_store(plan, seed)
    store.path.mkdir(parents=True, exist_ok=True)
    with _store_lock(store, echo, shared=True):
        if store.complete():
            echo(f"shard {shard}/{shards}: the features in {store.path} are already computed")
            return store, 0
        parts = shard_parts(store.work, shard, shards, batch_size)
        missing = [part for part in parts if not (store.path / part.chunk.path(".h5")).is_file()
                   and not (store.path / f"{part.name}.h5").is_file()]
        if len(missing) < len(parts):
            echo(f"shard {shard}/{shards}: {len(parts) - len(missing)} of its {len(parts)} parts are already computed")
        if not missing:
            return store, 0
        _write_trunk(plan, store, plan.trunk_names)
        todo = [Chunk(part.chunk.phase, part.name, part.lines) for part in missing]
        nets = {part.name: _part_net(store.nets[part.chunk.name], part) for part in missing}
        for part in todo:
            write_atomic(store.path / part.path(".txt"), "".join(line.text() for line in part.lines))
        engine = _checked_engine(target, plan, store, nets, todo, device, batch_size, echo, derived=False)
        images = sum(len(part.lines) for part in todo)
        with tqdm(total=images, unit="img", desc=f"shard {shard}/{shards}",
                  disable=None if show_progress is None else not show_progress, dynamic_ncols=True) as bar:
            for part in todo:
                _compute(target, plan, part, nets[part.name], store.path, engine, device, batch_size)
                bar.update(len(part.lines))
        echo(f"shard {shard}/{shards}: computed {images} images in {len(todo)} part{'s' * (len(todo) > 1)} with "
             f"{CAFFE if engine is None else OPENCV}")
    return store, images


def _compute(target, plan, chunk, net, store, engine, device, batch_size):
    """Compute ``chunk``'s features into its HDF5 file: with Caffe, or with OpenCV when ``engine`` (an OpenCVTrunk)
    is given."""
    if engine is None:
        _run_chunk(target, plan, chunk, net, store, device, batch_size)
    else:
        _run_chunk_opencv(plan, chunk, net, store, engine, batch_size)


def _part_net(net, part):
    """The trunk net of ``part``'s chunk, reading the part's list of images."""
    running = type(net)()
    running.CopyFrom(net)
    running.layer[0].image_data_param.source = f"{part.name}.txt"
    return running


def _record(plan, store):
    """What a finished store holds: its key, and what a deeper trunk needs to start from its features."""
    return {"key": store.key, "boundary": plan.boundary, "label": plan.label, "feature_shape": plan.feature_shape,
            "bytes": plan.bytes, **store.inputs, "computed_by": store.engine, "chunks": store.layer_digests}


# --- deeper trunks from shallower features -----------------------------------------------------
#
# When one freeze point's trunk continues another's (upto=fc6 and upto=fc7), the deeper features
# are the layers in between applied to the shallower ones: the same float32 inputs, the same layers,
# so the same features, for a fraction of the work when the layers in between are cheap.

# Derive when the layers on top cost at most this share of the whole trunk's multiply-adds.
DERIVE_SHARE = 0.5


@dataclass
class Source:
    """A finished store of a shallower trunk, and the layers that compute this trunk's features from its own."""

    path: Path
    record: dict
    layers: list  # names, in the order the trunk runs them


def derivation(plan, store, echo):
    """The Source to compute ``store`` from, when one exists and saves enough work; says which and why."""
    source = _shallower_store(plan, store)
    if source is None:
        return None
    data = {layer.name for layer in plan.data_layers.values()}
    trunk = [name for name in plan.trunk_names if name not in data]
    whole, rest = (_cost(plan, names) for names in (trunk, source.layers))
    words = f"'{plan.boundary}' from the cached '{source.record['boundary']}' of {source.path}"
    if whole is None or rest is None:
        echo(f"not deriving {words}: the cost of the layers is unknown")
        return None
    saving = f"{_millions(rest)} multiply-adds per image instead of {_millions(whole)}"
    if rest > DERIVE_SHARE * whole:
        echo(f"not deriving {words}: not worth it, {saving}")
        return None
    echo(f"deriving {words}: {saving}")
    return source


def _shallower_store(plan, store):
    """The deepest finished store in the shared folder whose trunk nets begin this store's, or None."""
    if plan.store_root is None:
        return None
    mine = store.layer_digests
    found = None
    for path in sorted(plan.store_root.glob(f"*/{STORE_RECORD}")):
        record = json.loads(path.read_text(encoding="utf-8"))
        theirs = record.get("chunks", {})
        same_inputs = all(record.get(name) == value for name, value in store.inputs.items())
        if path.parent == store.path or not same_inputs or theirs.keys() != mine.keys():
            continue
        depth = len(next(iter(theirs.values())))
        if not all(mine[name][:depth] == digests and len(mine[name]) > depth for name, digests in theirs.items()):
            continue
        if not all((path.parent / f"{name}.h5").is_file() for name in theirs):
            continue
        layers = _layers_on(store.nets[store.work[0].name], depth, record)
        if layers is not None and (found is None or depth > found[0]):
            found = depth, Source(path.parent, record, layers)
    return found and found[1]


def _layers_on(trunk, depth, record):
    """Names of the layers of ``trunk`` after its first ``depth``, when they read nothing but the stored blobs."""
    available = {record["boundary"], record["label"]}
    layers = trunk.layer[depth:]
    for layer in layers:
        if not set(layer.bottom) <= available:
            return None
        available.update(layer.top)
    return [layer.name for layer in layers]


def _cost(plan, names):
    costs = [plan.multiply_adds.get(name) for name in names]
    return None if None in costs else sum(costs)


def _millions(count):
    return f"{count / 1e6:.1f} M"


def derived_net(plan, store, source, chunk):
    """The net computing a chunk's features from the source's: HDF5Data on its features, the layers on top."""
    net = BVLC.NetParameter(name=f"{plan.net.name}_trunk")
    data = net.layer.add(name="cached", type="HDF5Data", top=[FEATURE_DATASET, LABEL_DATASET])
    data.hdf5_data_param.source, data.hdf5_data_param.batch_size = chunk.path(".source.txt"), 1
    if source.record["boundary"] != FEATURE_DATASET:
        _add_reshape(net, FEATURE_DATASET, source.record["boundary"], [0] + list(source.record["feature_shape"]))
    if source.record["label"] != LABEL_DATASET:
        _add_reshape(net, LABEL_DATASET, source.record["label"], (0,))
    trunk = {layer.name: layer for layer in store.nets[chunk.name].layer}
    net.layer.extend(trunk[name] for name in source.layers)
    return net


def _derived_files(plan, store, source):
    """{name in the store: text}: each chunk's derived net and the list of the source features it reads."""
    files = {chunk.path(".prototxt"): to_text(derived_net(plan, store, source, chunk)) for chunk in store.work}
    files.update((chunk.path(".source.txt"), f"{source.path / chunk.path('.h5')}\n") for chunk in store.work)
    return files


def _store_lock(store, echo, shared=False):
    """The feature store's lock, taken in turns with the other runs computing its features."""
    path = store.path / STORE_LOCK
    return waiting_lock(path, lambda: echo(f"waiting for another run that is computing the features in {store.path}"),
                        shared)


def _run_chunk(target, plan, chunk, net, store, device, batch_size):
    """Compute one chunk's features and labels with ``extract_features`` into its HDF5 file; drop the LMDBs after."""
    count = len(chunk.lines)
    databases = _caffe_databases(target, chunk, net, [plan.boundary, plan.label], store, device, batch_size)
    try:
        write_features_h5(store / chunk.path(".h5"),
                          {FEATURE_DATASET: feature_slices(databases[plan.boundary], count),
                           LABEL_DATASET: feature_slices(databases[plan.label], count)},
                          count, _shapes(plan), {COMPUTED_BY: CAFFE})
    finally:
        for database in databases.values():
            shutil.rmtree(database, ignore_errors=True)


def _caffe_databases(target, chunk, net, blobs, store, device, batch_size, weights=STORE_WEIGHTS):
    """{blob: LMDB} of ``blobs`` that ``extract_features`` computes over ``chunk`` with ``net``.

    Caffe's log is appended to the store's extract.log.
    """
    running = type(net)()
    running.CopyFrom(net)
    data = running.layer[0]
    batch = min(batch_size, len(chunk.lines))
    getattr(data, "image_data_param" if data.type == "ImageData" else "hdf5_data_param").batch_size = batch
    try:
        return run_extract_features(target, running, weights, blobs, len(chunk.lines), batch, store, device,
                                    name=chunk.name)
    except CaffegenError as error:
        raise CaffegenError(f"computing the features of {chunk.name} failed: {error.message}", store / STORE_LOG) \
            from None
    finally:
        log = store / chunk.path(".log")
        if log.is_file():
            with (store / STORE_LOG).open("a", encoding="utf-8") as out:
                out.write(log.read_text(encoding="utf-8"))
            log.unlink()


# --- OpenCV DNN as the engine ------------------------------------------------------------------
#
# OpenCV's DNN module runs the same trunk net and weights, without a Caffe process per chunk or
# the LMDBs in between; bench/cache_scale.py measures which engine is faster on a machine. caffegen
# feeds it the images preprocessed as Caffe's ImageData layer does, and trusts it only after it
# agreed with Caffe on the first mini-batch of every extraction.

OPENCV_NET = "opencv_trunk.prototxt"
# Layer types whose OpenCV DNN output is known to differ from Caffe 1.0's: {type: why, for a layer, or None}.
# OpenCV's LRN reads no k and always adds 1 (features 30% off with k: 2); with k: 1 they agree.
OPENCV_DIFFERS = {
    "LRN": lambda layer: f"OpenCV DNN ignores k: {layer.lrn_param.k:g} of LRN '{layer.name}' (it adds 1)"
    if layer.lrn_param.k != 1 else None,
}


@dataclass
class OpenCVTrunk:
    """The trunk as OpenCV DNN runs it: its net, the deploy file, the input blob, the layer giving the features."""

    net: object
    deploy: Path
    input_blob: str
    output: str


def _checked_engine(target, plan, store, nets, todo, device, batch_size, echo, derived):
    """The OpenCVTrunk to compute the features with, or None for Caffe.

    OpenCV when asked for (with ``auto``: when it is installed and reads the trunk), and only when
    it agrees with Caffe on the first mini-batch; otherwise Caffe, saying why in one line.
    """
    if plan.engine == CAFFE or not todo:
        return None
    if derived:
        echo("computing the features with Caffe: they start from a shallower trunk's stored features")
        return None
    try:
        check, trunk = engine_check(target, nets[todo[0].name], STORE_WEIGHTS, todo[0].lines[:batch_size],
                                    plan.boundary, plan.input_shape, store.path, device,
                                    name=f"{todo[0].name}.opencv_check")
    except CaffegenError as error:
        if plan.engine == OPENCV:
            raise
        echo(f"computing the features with Caffe: {error.message}")
        return None
    if not check.passed:
        echo(f"{check.line()}: computing all the features with Caffe instead")
        return None
    echo(check.line())
    return trunk


def engine_check(target, net, weights, lines, boundary, input_shape, folder, device=None, name="opencv_check"):
    """(FeatureCheck, OpenCVTrunk): OpenCV DNN against real Caffe on the images of ``lines`` for trunk ``net``.

    ``net`` starts with its ImageData layer and computes blob ``boundary`` from images of
    ``input_shape``; ``weights`` and the files written (named ``name``) are in ``folder``. Refuses in
    one line what OpenCV cannot compute as Caffe does.
    """
    folder = Path(folder)
    trunk = opencv_trunk(net, boundary, input_shape, folder / weights, folder)
    first = Chunk(TEST, name, list(lines))
    write_atomic(folder / first.path(".txt"), "".join(line.text() for line in first.lines))
    checking = type(net)()
    checking.CopyFrom(net)
    checking.layer[0].image_data_param.source = first.path(".txt")
    databases = _caffe_databases(target, first, checking, [boundary], folder, device, len(first.lines), weights)
    try:
        caffe = read_feature_db(databases[boundary], len(first.lines))
    finally:
        shutil.rmtree(databases[boundary], ignore_errors=True)
        (folder / first.path(".txt")).unlink()
    return compare_features(caffe, _opencv_rows(trunk, net.layer[0], first.lines, folder)), trunk


def opencv_trunk(net, boundary, input_shape, weights, folder):
    """The OpenCVTrunk of trunk ``net`` (ImageData first), refusing in one line what OpenCV cannot compute as Caffe."""
    opencv_dnn()
    data = net.layer[0]
    if data.transform_param.mirror:
        raise CaffegenError(f"mirror: true in '{data.name}' flips images at random with Caffe's own generator")
    differing = [why for layer in net.layer if layer.type in OPENCV_DIFFERS
                 for why in [OPENCV_DIFFERS[layer.type](layer)] if why]
    if differing:
        raise CaffegenError(f"{differing[0]}, so its features would differ from Caffe's")
    deploy = BVLC.NetParameter(name=net.name)
    deploy.layer.add(name=data.name, type="Input", top=[data.top[0]]).input_param.shape.add().dim.extend(
        (1,) + tuple(input_shape[1:]))
    deploy.layer.extend(net.layer[1:])
    write_atomic(folder / OPENCV_NET, to_text(deploy))
    output = [layer.name for layer in net.layer if boundary in layer.top][-1]
    return OpenCVTrunk(opencv_net(folder / OPENCV_NET, weights), folder / OPENCV_NET, data.top[0], output)


def _opencv_rows(trunk, data, lines, store):
    """OpenCV's features (N, values) of the images of ``lines``, read as ImageData layer ``data`` reads them."""
    paths = [data.image_data_param.root_folder + line.path for line in lines]
    return opencv_batch(trunk.net, trunk.input_blob, caffe_input(data, paths, store), trunk.output, trunk.deploy)


def _run_chunk_opencv(plan, chunk, net, store, trunk, batch_size):
    """Compute one chunk's features with OpenCV DNN, a mini-batch at a time, and its labels into its HDF5 file."""
    count = len(chunk.lines)
    features = (_opencv_rows(trunk, net.layer[0], chunk.lines[start:start + batch_size], store)
                for start in range(0, count, batch_size))
    labels = [np.array([line.label_number for line in chunk.lines], np.float32)]
    try:
        write_features_h5(store / chunk.path(".h5"), {FEATURE_DATASET: features, LABEL_DATASET: labels}, count,
                          _shapes(plan), {COMPUTED_BY: OPENCV})
    except CaffegenError as error:
        raise CaffegenError(f"computing the features of {chunk.name} with OpenCV failed: {error.message}",
                            error.path) from None


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


def head_solver(run_solver, gpu):
    """The run's solver on the head net: the same batch sizes, so the same iterations, tests and epochs."""
    solver = type(run_solver)()
    solver.CopyFrom(run_solver)
    for name in ("train_net", "test_net", "net_param", "train_net_param", "test_net_param"):
        solver.ClearField(name)
    solver.net = HEAD_NET
    solver.snapshot_prefix = HEAD_SNAPSHOTS
    solver.solver_mode = solver.CPU if gpu is None else solver.GPU
    return solver


def write_head(plan, store, solver, gpu):
    """Write the head net on ``store``'s features, its solver and its starting weights; return ``caffe train``'s
    arguments."""
    run_dir = plan.run_dir
    (run_dir / FEATURES).mkdir(exist_ok=True)
    for phase, subset in LISTS.items():
        files = [os.path.relpath(store.path / chunk.path(".h5"), run_dir) for chunk in store.work if chunk.phase == phase]
        write_atomic(run_dir / FEATURES / f"{subset}.txt", "".join(f"{name}\n" for name in files))
    write_atomic(run_dir / HEAD_NET, to_text(head_net(plan)))
    write_atomic(run_dir / HEAD_SOLVER, to_text(head_solver(solver, gpu)))
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


@dataclass
class CachedFeatures:
    """A run's features, ready for its head: the plan, the store, whether it was reused, and the run's solver."""

    plan: object
    store: FeatureStore
    reused: bool
    seconds: float
    solver: object
    gpu: str  # Caffe's -gpu, or None on the CPU


def store_of(run):
    """The FeatureStore a prepared cached run reads, found without running anything."""
    return feature_store(plan_cache(run), _seed(read_solver(run.path / "solver.prototxt")))


def extract_features(run, target, echo=None, show_progress=None):
    """Compute the trunk features of :class:`RunDir` ``run`` into its store, or reuse them; train nothing."""
    echo = echo or (lambda line: None)
    device, plan, solver, batch = _planned(run, target, echo)
    started = time.monotonic()
    store, reused = extract(plan, target, device, echo, show_progress, _seed(solver), batch)
    run.record(features_engine=store.engine)
    return CachedFeatures(plan, store, reused, time.monotonic() - started, solver, device.gpu_flag)


def extract_features_shard(run, target, shard, shards, echo=None, show_progress=None):
    """Compute shard ``shard`` of ``shards`` of :class:`RunDir` ``run``'s trunk features, as one task of a job array;
    return (the FeatureStore, the images computed, the seconds taken)."""
    echo = echo or (lambda line: None)
    device, plan, solver, batch = _planned(run, target, echo)
    started = time.monotonic()
    store, images = extract_shard(plan, target, shard, shards, device, echo, show_progress, _seed(solver), batch)
    return store, images, time.monotonic() - started


def _planned(run, target, echo):
    """(the device, the CachePlan, the solver, the mini-batch) of a cached run, its labels checked and its plan
    and mini-batch told."""
    device = target.launch_device(run.device, echo)
    run.check_labels()
    plan = plan_cache(run)
    for line in plan.warnings + plan.notes + [plan.describe()]:
        echo(line)
    batch = extraction_batch(plan, device, memory_budget(device))
    echo(batch.line())
    return device, plan, read_solver(run.path / "solver.prototxt"), batch.size


def run_cached(run, target, echo=None, show_progress=None):
    """Cache the trunk's features of :class:`RunDir` ``run``, train the head on them, and merge final.caffemodel.

    ``target`` is the Caffe to run and the device asked for, as ``launch`` resolved them.
    """
    started = time.monotonic()
    features = extract_features(run, target, echo, show_progress)
    plan, store, reused, extracted = features.plan, features.store, features.reused, features.seconds
    arguments = write_head(plan, store, features.solver, features.gpu)
    result = run_caffe_train(target.caffe, arguments, run.path, [], echo or (lambda line: None), show_progress)
    trained = result.seconds
    if result.final_model and result.exit_code in (0, INTERRUPTED):
        result.final_model = merge_model(plan, result.final_model)
    result.seconds = time.monotonic() - started
    timings = {"extract_seconds": round(extracted, 3), "train_seconds": round(trained, 3), "reused": reused,
               "store": str(store.path), "engine": store.engine, "engine_asked": plan.engine,
               "boundary": plan.boundary,
               "feature_shape": list(plan.feature_shape), "bytes": plan.bytes}
    origin = f"reused from {store.path}" if reused else f"computed into {store.path}"
    result.notes.append(f"trunk features: {timings['extract_seconds']:.1f} s with {store.engine} ({origin}); "
                        f"head training: {trained:.1f} s")
    write_result(run.path, replace(result_summary(result, run.path), cache=timings))
    return result


def _seed(solver):
    return solver.random_seed if solver.random_seed >= 0 else 0
