"""Caffe as the engine of an extraction: ``extract_features`` over a chunk into LMDBs, copied into its HDF5 file."""

import shutil

from caffegen.errors import CaffegenError
from caffegen.io.featuredb import feature_slices, write_features_h5
from caffegen.job.options import CAFFE
from caffegen.run.cache.store import FEATURE_DATASET, LABEL_DATASET, STORE_LOG, STORE_WEIGHTS, feature_shapes
from caffegen.run.engines.caffe import run_extract_features
from caffegen.run.shards import COMPUTED_BY


def run_chunk_caffe(target, plan, chunk, net, store, device, batch_size):
    """Compute one chunk's features and labels with ``extract_features`` into its HDF5 file; drop the LMDBs after."""
    count = len(chunk.lines)
    databases = caffe_databases(target, chunk, net, [plan.boundary, plan.label], store, device, batch_size)
    try:
        write_features_h5(store / chunk.path(".h5"),
                          {FEATURE_DATASET: feature_slices(databases[plan.boundary], count),
                           LABEL_DATASET: feature_slices(databases[plan.label], count)},
                          count, feature_shapes(plan), {COMPUTED_BY: CAFFE})
    finally:
        for database in databases.values():
            shutil.rmtree(database, ignore_errors=True)


def caffe_databases(target, chunk, net, blobs, store, device, batch_size, weights=STORE_WEIGHTS):
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
