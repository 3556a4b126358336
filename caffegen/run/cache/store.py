"""A feature store: the folder of one trunk's features over one image list, named by what they depend on,
its chunks and its record."""

import functools
import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from caffegen.defaults import CHUNK_IMAGES
from caffegen.io.featuredb import stored_attribute
from caffegen.io.files import file_sha256
from caffegen.io.lists import ListLine, read_list
from caffegen.io.locks import waiting_lock
from caffegen.io.prototxt import to_text
from caffegen.io.schema import BVLC
from caffegen.job.cacheplan import LISTS
from caffegen.job.options import CAFFE
from caffegen.net.netview import TRAIN
from caffegen.run.shards import COMPUTED_BY

FEATURES = "features"


# The files of a feature store besides its chunks.
STORE_WEIGHTS, STORE_RECORD, STORE_LOG, STORE_LOCK = "trunk.caffemodel", "cache.json", "extract.log", ".lock"


# The dataset names Caffe's HDF5Output layer writes; HDF5Data reads datasets named as its tops.
FEATURE_DATASET, LABEL_DATASET = "data", "label"


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
    engine: str = None  # what computed the features, once they are: caffe or an engine's name
    engine_checks: dict = None  # {engine: its first mini-batch against Caffe's, or why it was not used}

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
    """The trunk as a net for ``extract_features``: ImageData on the chunk's list (batch size 1 until it runs), then
    the trunk."""
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


def feature_shapes(plan):
    """{dataset: shape of one image's values} of a chunk's HDF5 file."""
    return {FEATURE_DATASET: plan.feature_shape, LABEL_DATASET: ()}


def stored_engine(store, computing, source=None):
    """What computed the store's chunks, as their files say (``computing`` for files that do not), and what
    computed the shallower features of ``source`` (a Source) that they were derived from."""
    engines = {stored_attribute(store.path / chunk.path(".h5"), COMPUTED_BY) or computing for chunk in store.work}
    if source is not None:
        engines.update(source.record.get("computed_by", CAFFE).split(" and "))
    return " and ".join(sorted(engines))


def store_record(plan, store):
    """What a finished store holds: its key, and what a deeper trunk needs to start from its features."""
    return {"key": store.key, "boundary": plan.boundary, "label": plan.label, "feature_shape": plan.feature_shape,
            "bytes": plan.bytes, **store.inputs, "computed_by": store.engine, "chunks": store.layer_digests}


def store_lock(store, reporter, shared=False):
    """The feature store's lock, taken in turns with the other runs computing its features."""
    path = store.path / STORE_LOCK
    waiting = f"waiting for another run that is computing the features in {store.path}"
    return waiting_lock(path, lambda: reporter.line(waiting), shared)


def add_reshape(net, bottom, top, dims):
    layer = net.layer.add(name=f"cached_{top}", type="Reshape", bottom=[bottom], top=[top])
    layer.reshape_param.shape.dim.extend(dims)
