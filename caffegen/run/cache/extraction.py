"""Computing a store's features: all its chunks (resuming, merging shards' parts, deriving from a shallower
store), or one shard's parts of them."""

import json

from tqdm import tqdm

from caffegen.defaults import CACHE_BATCH
from caffegen.io.files import write_atomic
from caffegen.job.options import CAFFE, OPENCV
from caffegen.net.netview import TRAIN
from caffegen.run.cache.derivation import derivation, derived_files, derived_net
from caffegen.run.cache.engine_caffe import run_chunk_caffe
from caffegen.run.cache.engine_opencv import checked_engine, run_chunk_opencv
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


def extract(plan, target, device=None, echo=None, show_progress=None, seed=1, batch_size=CACHE_BATCH):
    """Run the trunk over every image once into its store; return (the FeatureStore, whether it was reused).

    Runs sharing a store wait for each other: the first computes, the others reuse. Chunks an
    interrupted extraction finished are kept and not computed again.
    """
    echo = echo or (lambda line: None)
    store = feature_store(plan, seed)
    store.path.mkdir(parents=True, exist_ok=True)
    with store_lock(store, echo):
        if store.complete():
            store.engine = json.loads((store.path / STORE_RECORD).read_text(encoding="utf-8")).get("computed_by", CAFFE)
            echo(f"reusing the cached features in {store.path} (computed with {store.engine})")
            return store, True
        (store.path / STORE_RECORD).unlink(missing_ok=True)
        source = derivation(plan, store, echo)
        nets = store.nets if source is None else {chunk.name: derived_net(plan, store, source, chunk)
                                                  for chunk in store.work}
        files = store.files if source is None else derived_files(plan, store, source)
        for name, text in files.items():
            write_atomic(store.path / name, text)
        _write_trunk(plan, store, plan.trunk_names if source is None else source.layers)
        merged = [chunk for chunk in store.work if not (store.path / chunk.path(".h5")).is_file()
                  and merge_parts(store.path, chunk, feature_shapes(plan))]
        if merged:
            echo(f"merged the shards' parts of {len(merged)} chunks of features")
        done = [chunk for chunk in store.work if (store.path / chunk.path(".h5")).is_file()]
        if done:
            echo(f"resuming: {len(done)} of {len(store.work)} chunks of features are already computed")
        todo = [chunk for chunk in store.work if chunk not in done]
        engine = checked_engine(target, plan, store, nets, todo, device, batch_size, echo, derived=source is not None)
        with tqdm(total=sum(plan.images.values()), unit="img", desc="trunk features",
                  disable=None if show_progress is None else not show_progress, dynamic_ncols=True) as bar:
            bar.update(sum(len(chunk.lines) for chunk in done))
            _compute_all(todo, bar, target, plan, nets, store.path, engine, device, batch_size)
        for chunk in store.work:  # parts left of chunks computed whole
            remove_parts(store.path, chunk)
        store.engine = stored_engine(store, CAFFE if engine is None else OPENCV, source)
        write_atomic(store.path / STORE_RECORD, json.dumps(store_record(plan, store)) + "\n")
    return store, False


def _write_trunk(plan, store, layers):
    """Write the trunk's weights (of ``layers``) and the mean file into the store, where its nets read them."""
    if plan.mean_file is not None:  # the trunk nets name it as the run directory does, and run in the store
        write_atomic(store.path / plan.data_layers[TRAIN].transform_param.mean_file, plan.mean_file.read_bytes())
    write_trimmed_weights(plan.weights, store.path / STORE_WEIGHTS, layers, plan.param_shapes)


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
    with store_lock(store, echo, shared=True):
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
        engine = checked_engine(target, plan, store, nets, todo, device, batch_size, echo, derived=False)
        images = sum(len(part.lines) for part in todo)
        with tqdm(total=images, unit="img", desc=f"shard {shard}/{shards}",
                  disable=None if show_progress is None else not show_progress, dynamic_ncols=True) as bar:
            for part in todo:
                _compute(target, plan, part, nets[part.name], store.path, engine, device, batch_size)
                bar.update(len(part.lines))
        echo(f"shard {shard}/{shards}: computed {images} images in {len(todo)} part{'s' * (len(todo) > 1)} with "
             f"{CAFFE if engine is None else OPENCV}")
    return store, images


def _compute_all(chunks, bar, target, plan, nets, store, engine, device, batch_size):
    """Compute ``chunks`` one after another, each counted on the progress ``bar`` once done."""
    for chunk in chunks:
        _compute(target, plan, chunk, nets[chunk.name], store, engine, device, batch_size)
        bar.update(len(chunk.lines))


def _compute(target, plan, chunk, net, store, engine, device, batch_size):
    """Compute ``chunk``'s features into its HDF5 file: with Caffe, or with OpenCV when ``engine`` (an OpenCVTrunk)
    is given."""
    if engine is None:
        run_chunk_caffe(target, plan, chunk, net, store, device, batch_size)
    else:
        run_chunk_opencv(plan, chunk, net, store, engine, batch_size)


def _part_net(net, part):
    """The trunk net of ``part``'s chunk, reading the part's list of images."""
    running = type(net)()
    running.CopyFrom(net)
    running.layer[0].image_data_param.source = f"{part.name}.txt"
    return running
