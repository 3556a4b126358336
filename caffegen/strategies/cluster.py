"""A cached run on a Slurm cluster: its trunk features in shards, one per task of a job array, then its head.

:func:`write_cluster_scripts` writes two scripts into the run directory: ``slurm_features.sh``, a job
array whose task i computes shard i of N (``caffegen launch RUN --features-only --shard i/N``), and
``slurm_head.sh``, which merges the shards' parts into the store, trains the head and writes
final.caffemodel (``caffegen launch RUN``). :func:`submit_cluster` submits the head's job to start
once every task of the array succeeded.
"""

import math

from caffegen.io.lists import read_list
from caffegen.job.cacheplan import LISTS
from caffegen.job.memorycheck import extraction_batch
from caffegen.strategies.childlaunch import launch_command
from caffegen.strategies.slurm import (
    FEATURES_SCRIPT,
    HEAD_SCRIPT,
    check_sbatch,
    check_slurm,
    node_budget,
    submit,
    write_sbatch_script,
)

# Without --shards: one shard per SHARD_IMAGES images, at most MOST_SHARDS.
SHARD_IMAGES = 1000
MOST_SHARDS = 64


def default_shards(run):
    """How many shards a run's images make without --shards: one per SHARD_IMAGES, at most MOST_SHARDS."""
    images = sum(len(read_list(run.path / f"{subset}.txt")) for subset in LISTS.values())
    return max(1, min(MOST_SHARDS, math.ceil(images / SHARD_IMAGES)))


def pin_cache_batch(run, sbatch_options=()):
    """Record in ``run``'s manifest the mini-batch every shard runs, so that all of them split the chunks alike:
    its ``--cache-batch``, else the most that fit a node's memory as :func:`node_budget` knows it; return the
    ExtractionBatch."""
    batch = extraction_batch(run.cache_plan, run.device, node_budget(sbatch_options, run.device))
    if run.cache_batch is None:
        run.record(cache_batch=batch.size)
    return batch


def write_cluster_scripts(run, shards, sbatch_options=(), caffe=None, gpu=None, evaluate=False,
                          tracked_elsewhere=False):
    """Write the job array of :class:`RunDir` ``run``'s feature shards and its head's job; return both scripts.
    A run ``tracked_elsewhere`` (a watch follows it from where it was submitted) is sent to no tracker by its head."""
    check_slurm(run.path, sbatch_options)
    child = {"run_dir": run.path, "caffe": caffe, "gpu": gpu}
    features = write_sbatch_script(
        run.path, FEATURES_SCRIPT, "features", launch_command("--features-only", "--shard", **child),
        f"A cached fine-tuning run: task i computes shard i of {shards} of the trunk features", sbatch_options,
        tasks=shards, task_argument=f'"$SLURM_ARRAY_TASK_ID/{shards}"')
    head_options = (["--evaluate"] if evaluate else []) + (["--report-to", "none"] if tracked_elsewhere else [])
    head = write_sbatch_script(
        run.path, HEAD_SCRIPT, "head", launch_command(*head_options, **child),
        "A cached fine-tuning run: it merges the shards' features, trains the head and writes final.caffemodel",
        sbatch_options, after=FEATURES_SCRIPT)
    return features, head


def submit_cluster(features, head):
    """Submit the shards' job array, then the head's job to start when every shard succeeded; return both job ids."""
    check_sbatch(features)
    array = submit(features)
    return array, submit(head, array, "head's job")
