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

from caffegen.run.cache.cachedrun import CachedFeatures, extract_features, extract_features_shard, run_cached, store_of
from caffegen.run.cache.engine_checked import engine_check, engine_trunk
from caffegen.run.cache.extraction import extract, extract_shard
from caffegen.run.cache.head import FINAL_MODEL, HEAD_NET, HEAD_WEIGHTS, head_net, head_solver, merge_model, write_head
from caffegen.run.cache.store import (
    FEATURES,
    STORE_LOCK,
    STORE_LOG,
    STORE_RECORD,
    STORE_WEIGHTS,
    Chunk,
    FeatureStore,
    chunks,
    feature_store,
    trunk_net,
)
from caffegen.run.cache.weights import write_trimmed_weights

__all__ = [
    "CachedFeatures", "extract_features", "extract_features_shard", "run_cached", "store_of",
    "engine_check", "engine_trunk", "extract", "extract_shard", "FINAL_MODEL", "HEAD_NET", "HEAD_WEIGHTS",
    "head_net", "head_solver", "merge_model", "write_head", "FEATURES", "STORE_LOCK", "STORE_LOG", "STORE_RECORD",
    "STORE_WEIGHTS", "Chunk", "FeatureStore", "chunks", "feature_store", "trunk_net", "write_trimmed_weights",
]
