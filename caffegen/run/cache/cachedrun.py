"""A cached run from its run directory: its features computed or reused, its head trained, its result recorded."""

import time
from dataclasses import dataclass, replace

from caffegen.errors import Terminated
from caffegen.io.prototxt import read_solver
from caffegen.job.memorycheck import extraction_batch
from caffegen.job.rundir import EVENTS, write_result
from caffegen.reporting import SilentReporter
from caffegen.run.cache.extraction import extract, extract_shard
from caffegen.run.cache.head import merge_model, write_head
from caffegen.run.cache.store import FeatureStore, feature_store
from caffegen.run.runner import INTERRUPTED, result_summary, run_caffe_train
from caffegen.run.target import memory_budget


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
    return feature_store(run.cache_plan, _seed(read_solver(run.solver)))


def extract_features(run, target, reporter=None):
    """Compute the trunk features of :class:`RunDir` ``run`` into its store, or reuse them; train nothing."""
    reporter = reporter or SilentReporter()
    device, plan, solver, batch = _planned(run, target, reporter)
    started = time.monotonic()
    with reporter.recording(run.path / EVENTS):
        store, reused = extract(plan, target, device, reporter, _seed(solver), batch)
    run.record(features_engine=store.engine)
    return CachedFeatures(plan, store, reused, time.monotonic() - started, solver, device.gpu_flag)


def extract_features_shard(run, target, shard, shards, reporter=None):
    """Compute shard ``shard`` of ``shards`` of :class:`RunDir` ``run``'s trunk features, as one task of a job array;
    return (the FeatureStore, the images computed, the seconds taken)."""
    reporter = reporter or SilentReporter()
    device, plan, solver, batch = _planned(run, target, reporter)
    started = time.monotonic()
    with reporter.recording(run.path / EVENTS):
        store, images = extract_shard(plan, target, shard, shards, device, reporter, _seed(solver), batch)
    return store, images, time.monotonic() - started


def _planned(run, target, reporter):
    """(the device, the CachePlan, the solver, the mini-batch) of a cached run, its labels checked and its plan
    and mini-batch told."""
    device = target.launch_device(run.device, reporter)
    run.check_labels()
    plan = run.cache_plan
    for line in plan.warnings + plan.notes + [plan.describe()]:
        reporter.line(line)
    batch = extraction_batch(plan, device, memory_budget(device))
    reporter.line(batch.line())
    return device, plan, read_solver(run.solver), batch.size


def run_cached(run, target, reporter=None):
    """Cache the trunk's features of :class:`RunDir` ``run``, train the head on them, and merge final.caffemodel.

    ``target`` is the Caffe to run and the device asked for, as ``launch`` resolved them.
    """
    started = time.monotonic()
    reporter = reporter or SilentReporter()
    features = extract_features(run, target, reporter)
    arguments = write_head(features.plan, features.store, features.solver, features.gpu)
    try:
        result = run_caffe_train(target.caffe, arguments, run.path, [], reporter)
    except Terminated as terminated:  # the head stopped with a snapshot: the run's model is still the merged one
        _record_cached(run, features, terminated.result, started)
        raise
    return _record_cached(run, features, result, started)


def _record_cached(run, features, result, started):
    """Merge final.caffemodel from the head's last snapshot and record the run's result with its timings."""
    plan, store, trained = features.plan, features.store, result.seconds
    if result.final_model and result.exit_code in (0, INTERRUPTED):
        result.final_model = merge_model(plan, result.final_model)
    result.seconds = time.monotonic() - started
    timings = {"extract_seconds": round(features.seconds, 3), "train_seconds": round(trained, 3),
               "reused": features.reused, "store": str(store.path), "engine": store.engine,
               "engine_asked": plan.engine, "engine_checks": store.engine_checks, "boundary": plan.boundary,
               "feature_shape": list(plan.feature_shape), "bytes": plan.bytes}
    origin = f"reused from {store.path}" if features.reused else f"computed into {store.path}"
    result.notes.append(f"trunk features: {timings['extract_seconds']:.1f} s with {store.engine} ({origin}); "
                        f"head training: {trained:.1f} s")
    write_result(run.path, replace(result_summary(result, run.path), cache=timings))
    return result


def _seed(solver):
    return solver.random_seed if solver.random_seed >= 0 else 0
