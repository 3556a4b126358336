"""A cached run on a Slurm cluster: its trunk features in shards, one per task of a job array, then its head.

:func:`write_cluster_scripts` writes two scripts into the run directory: ``slurm_features.sh``, a job
array whose task i computes shard i of N (``caffegen launch RUN --features-only --shard i/N``), and
``slurm_head.sh``, which merges the shards' parts into the store, trains the head and writes
final.caffemodel (``caffegen launch RUN``). :func:`submit_cluster` submits the head's job to start
once every task of the array succeeded.
"""

import math
import shlex
import sys
from pathlib import Path

from caffegen.io.files import write_atomic
from caffegen.io.lists import read_list
from caffegen.io.templates import render_template
from caffegen.job.cacheplan import LISTS, plan_cache
from caffegen.job.memorycheck import extraction_batch
from caffegen.run.target import memory_budget
from caffegen.strategies.slurm import check_sbatch, check_slurm, submit
from caffegen.strategies.sweep import UNSAFE_NAME

SLURM_FEATURES_SCRIPT = "slurm_features.sh"
SLURM_HEAD_SCRIPT = "slurm_head.sh"
# Without --shards: one shard per SHARD_IMAGES images, at most MOST_SHARDS.
SHARD_IMAGES = 1000
MOST_SHARDS = 64


def default_shards(run):
    """How many shards a run's images make without --shards: one per SHARD_IMAGES, at most MOST_SHARDS."""
    images = sum(len(read_list(run.path / f"{subset}.txt")) for subset in LISTS.values())
    return max(1, min(MOST_SHARDS, math.ceil(images / SHARD_IMAGES)))


def pin_cache_batch(run):
    """Record in ``run``'s manifest the mini-batch every shard runs, so that all of them split the chunks alike:
    its ``--cache-batch``, else the most that fit on this machine; return the ExtractionBatch."""
    batch = extraction_batch(plan_cache(run), run.device, memory_budget(run.device))
    if run.cache_batch is None:
        run.record(cache_batch=batch.size)
    return batch


def write_cluster_scripts(run, shards, sbatch_options=(), caffe=None, gpu=None, evaluate=False):
    """Write the job array of :class:`RunDir` ``run``'s feature shards and its head's job; return both scripts."""
    check_slurm(run.path, sbatch_options)
    run_dir = run.path.resolve()
    command = [sys.executable, "-m", "caffegen", "launch", str(run_dir)]
    command += (["--caffe", str(Path(caffe).resolve())] if caffe else []) + (["--gpu", gpu] if gpu else [])
    features = _write_script(run_dir, SLURM_FEATURES_SCRIPT, "features", sbatch_options, shards,
                             shlex.join(command + ["--features-only", "--shard"]) + f' "$SLURM_ARRAY_TASK_ID/{shards}"',
                             "slurm-features-%A_%a.out", f"task i computes shard i of {shards} of the trunk features")
    head = _write_script(run_dir, SLURM_HEAD_SCRIPT, "head", sbatch_options, None,
                         shlex.join(command + (["--evaluate"] if evaluate else [])), "slurm-head-%j.out",
                         "it merges the shards' features, trains the head and writes final.caffemodel",
                         f"--dependency=afterok:JOB (JOB: the id of {SLURM_FEATURES_SCRIPT}'s job) ")
    return features, head


def _write_script(run_dir, name, role, sbatch_options, tasks, command, output, purpose, dependency=""):
    script = run_dir / name
    text = render_template("cached_slurm.sh.j2", job_name=UNSAFE_NAME.sub("-", f"caffegen-{run_dir.name}-{role}"),
                           tasks=tasks, output=run_dir / output, sbatch_options=sbatch_options, purpose=purpose,
                           dependency=dependency, script=shlex.quote(str(script)), command=command)
    write_atomic(script, text)
    script.chmod(0o755)
    return script


def submit_cluster(features, head):
    """Submit the shards' job array, then the head's job to start when every shard succeeded; return both job ids."""
    check_sbatch(features)
    array = submit(features)
    return array, submit(head, array, "head's job")
