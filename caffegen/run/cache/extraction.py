"""Computing a store's features: all its chunks (resuming, merging shards' parts, deriving from a shallower
store), or one shard's parts of them."""

import json
import time
from dataclasses import dataclass
from pathlib import Path

from caffegen.defaults import CACHE_BATCH
from caffegen.io.files import write_atomic
from caffegen.job.options import CAFFE
from caffegen.net.netview import TRAIN
from caffegen.reporting import SilentReporter
from caffegen.run.cache.derivation import derivation, derived_files, derived_net
from caffegen.run.cache.engine_caffe import run_chunk_caffe
from caffegen.run.cache.engine_checked import checked_engine, run_chunk_engine
from caffegen.run.cache.store import (
    STORE_RECORD,
    STORE_WEIGHTS,
    Chunk,
    feature_shapes,
    feature_store,
    store_lock,
    store_record,
    stored_engine,
)
from caffegen.run.cache.weights import write_trimmed_weights
from caffegen.run.shards import merge_parts, remove_parts, shard_parts


def extract(plan, target, device=None, reporter=None, seed=1, batch_size=CACHE_BATCH):
    """Run the trunk over every image once into its store; return (the FeatureStore, whether it was reused).

    Runs sharing a store wait for each other: the first computes, the others reuse. Chunks an
    interrupted extraction finished are kept and not computed again.
    """
    reporter = reporter or SilentReporter()
    store = feature_store(plan, seed)
    store.path.mkdir(parents=True, exist_ok=True)
    with store_lock(store, reporter):
        if store.complete():
            return _reused(store, reporter), True
        (store.path / STORE_RECORD).unlink(missing_ok=True)
        source, nets = _store_written(plan, store, reporter)
        done = _done_chunks(plan, store, reporter)
        todo = [chunk for chunk in store.work if chunk not in done]
        engine = checked_engine(target, plan, store, nets, todo, device, batch_size, reporter,
                                derived=source is not None)
        computing = Computing(target, plan, nets, store.path, engine, device, batch_size)
        with reporter.progress(sum(plan.images.values()), "img", "trunk features",
                               initial=sum(len(chunk.lines) for chunk in done)) as progress:
            _compute_all(todo, computing, progress, reporter)
        for chunk in store.work:  # parts left of chunks computed whole
            remove_parts(store.path, chunk)
        store.engine = stored_engine(store, computing.engine_name, source)
        write_atomic(store.path / STORE_RECORD, json.dumps(store_record(plan, store)) + "\n")
    return store, False


def _reused(store, reporter):
    """The complete ``store``, its engine read from its record and its reuse told."""
    store.engine = json.loads((store.path / STORE_RECORD).read_text(encoding="utf-8")).get("computed_by", CAFFE)
    reporter.line(f"reusing the cached features in {store.path} (computed with {store.engine})")
    reporter.event(FeaturesReused(str(store.path), store.engine))
    return store


def _store_written(plan, store, reporter):
    """Write the store's nets, lists and trunk (from the images, or from a shallower trunk's store when one can
    serve); return (that shallower store or None, each chunk's net)."""
    source = derivation(plan, store, reporter)
    nets = store.nets if source is None else {chunk.name: derived_net(plan, store, source, chunk)
                                              for chunk in store.work}
    files = store.files if source is None else derived_files(plan, store, source)
    for name, text in files.items():
        write_atomic(store.path / name, text)
    _write_trunk(plan, store, plan.trunk_names if source is None else source.layers)
    return source, nets


def _done_chunks(plan, store, reporter):
    """The chunks already computed, once the shards' parts of the others are merged."""
    merged = [chunk for chunk in store.work if not (store.path / chunk.path(".h5")).is_file()
              and merge_parts(store.path, chunk, feature_shapes(plan))]
    if merged:
        reporter.line(f"merged the shards' parts of {len(merged)} chunks of features")
    done = [chunk for chunk in store.work if (store.path / chunk.path(".h5")).is_file()]
    if done:
        reporter.line(f"resuming: {len(done)} of {len(store.work)} chunks of features are already computed")
    return done


def _write_trunk(plan, store, layers):
    """Write the trunk's weights (of ``layers``) and the mean file into the store, where its nets read them."""
    if plan.mean_file is not None:  # the trunk nets name it as the run directory does, and run in the store
        write_atomic(store.path / plan.data_layers[TRAIN].transform_param.mean_file, plan.mean_file.read_bytes())
    write_trimmed_weights(plan.weights, store.path / STORE_WEIGHTS, layers, plan.param_shapes)


def extract_shard(plan, target, shard, shards, device=None, reporter=None, seed=1,
                  batch_size=CACHE_BATCH):
    """Compute shard ``shard`` of ``shards`` of the store's features into its parts; return (the FeatureStore,
    the images computed).

    Shards of one store run at once under a shared lock, so an unsharded extraction waits for them and
    they for it. A part already computed is kept; shards compute from the images, never from a
    shallower trunk's store. Each shard checks its engine against Caffe on its own first mini-batch.
    """
    reporter = reporter or SilentReporter()
    store = feature_store(plan, seed)
    store.path.mkdir(parents=True, exist_ok=True)
    with store_lock(store, reporter, shared=True):
        if store.complete():
            reporter.line(f"shard {shard}/{shards}: the features in {store.path} are already computed")
            return store, 0
        parts = shard_parts(store.work, shard, shards, batch_size)
        missing = [part for part in parts if not (store.path / part.chunk.path(".h5")).is_file()
                   and not (store.path / f"{part.name}.h5").is_file()]
        if len(missing) < len(parts):
            reporter.line(f"shard {shard}/{shards}: {len(parts) - len(missing)} of its {len(parts)} parts are already "
                          "computed")
        if not missing:
            return store, 0
        _write_trunk(plan, store, plan.trunk_names)
        todo = [Chunk(part.chunk.phase, part.name, part.lines) for part in missing]
        nets = {part.name: _part_net(store.nets[part.chunk.name], part) for part in missing}
        for part in todo:
            write_atomic(store.path / part.path(".txt"), "".join(line.text() for line in part.lines))
        engine = checked_engine(target, plan, store, nets, todo, device, batch_size, reporter, derived=False)
        computing = Computing(target, plan, nets, store.path, engine, device, batch_size)
        images = sum(len(part.lines) for part in todo)
        with reporter.progress(images, "img", f"shard {shard}/{shards}") as progress:
            _compute_all(todo, computing, progress, reporter)
        reporter.line(f"shard {shard}/{shards}: computed {images} images in {len(todo)} "
                      f"part{'s' * (len(todo) > 1)} with {computing.engine_name}")
    return store, images


@dataclass
class FeaturesReused:
    """A store's features were already computed (by ``engine``) and are read as they are."""

    store: str
    engine: str


@dataclass
class ChunkComputed:
    """One chunk of trunk features (or one shard's part of it) computed into its store."""

    chunk: str
    phase: str
    images: int
    engine: str
    seconds: float
    store: str


@dataclass(frozen=True)
class Computing:
    """What computes chunks: the Caffe and device, the plan, each chunk's net, the store, and the engine's Trunk
    (``engine``) when one agreed with Caffe, else None for Caffe itself."""

    target: object
    plan: object
    nets: dict
    store: Path
    engine: object
    device: object
    batch_size: int

    def compute(self, chunk):
        """Compute ``chunk``'s features into its HDF5 file."""
        if self.engine is None:
            run_chunk_caffe(self.target, self.plan, chunk, self.nets[chunk.name], self.store, self.device,
                            self.batch_size)
        else:
            run_chunk_engine(self.plan, chunk, self.nets[chunk.name], self.store, self.engine, self.batch_size)

    @property
    def engine_name(self):
        return CAFFE if self.engine is None else self.engine.engine


def _compute_all(chunks, computing, progress, reporter):
    """Compute ``chunks`` one after another, each counted on ``progress`` and told as an event once done."""
    for chunk in chunks:
        started = time.monotonic()
        computing.compute(chunk)
        reporter.event(ChunkComputed(chunk.name, chunk.phase, len(chunk.lines), computing.engine_name,
                                     round(time.monotonic() - started, 3), str(computing.store)))
        progress.advance(len(chunk.lines))


def _part_net(net, part):
    """The trunk net of ``part``'s chunk, reading the part's list of images."""
    running = type(net)()
    running.CopyFrom(net)
    running.layer[0].image_data_param.source = f"{part.name}.txt"
    return running
