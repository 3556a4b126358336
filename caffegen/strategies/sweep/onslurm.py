"""A sweep on Slurm: a job array with one task per run, after a job array computing the shared trunk features.

:func:`write_slurm_scripts` writes them into the sweep directory; :func:`submit_sweep` submits them.
"""

from pathlib import Path

from caffegen.job.rundir import RunDir
from caffegen.run.cache import store_of
from caffegen.strategies.childlaunch import launch_command
from caffegen.strategies.slurm import FEATURES_SCRIPT, SWEEP_SCRIPT, check_slurm, submit, write_sbatch_script


def feature_groups(sweep_dir, runs):
    """{feature store: [the runs reading it]} for the sweep's cached runs, in the order of ``runs``; a run's cache
    plan is the one prepare worked out when the SweepRun carries it."""
    groups = {}
    for run in runs:
        run_dir = RunDir(Path(sweep_dir) / run.run_dir)
        if run_dir.caches_features:
            if run.cache_plan is not None:
                run_dir.cache_plan = run.cache_plan  # the RunDir's own, so it is not worked out again
            groups.setdefault(store_of(run_dir).path, []).append(run)
    return groups


def write_slurm_scripts(sweep_dir, runs, sbatch_options=(), caffe=None):
    """Write the sweep's job arrays; return (``slurm_features.sh`` or None, ``slurm.sh``).

    Task i of ``slurm.sh`` launches run i. When runs cache their features, task j of
    ``slurm_features.sh`` first computes the features of the j-th distinct trunk, once for all
    the runs that share it; ``slurm.sh`` is then submitted to start after it (:func:`submit_sweep`).
    """
    check_slurm(sweep_dir, sbatch_options)
    sweep_dir = Path(sweep_dir).resolve()
    groups = feature_groups(sweep_dir, runs)
    features = None
    if groups:
        features = _write_array(sweep_dir, FEATURES_SCRIPT, "features", [group[0] for group in groups.values()],
                                sbatch_options, launch_command("--features-only", caffe=caffe),
                                "task i computes the trunk features shared by the runs of store i")
    array = _write_array(sweep_dir, SWEEP_SCRIPT, "runs", runs, sbatch_options,
                         launch_command("--evaluate", caffe=caffe), "task i launches run i of sweep.json",
                         FEATURES_SCRIPT if groups else None)
    return features, array


def _write_array(sweep_dir, name, role, runs, sbatch_options, command, purpose, after=None):
    """Write the job array ``name``, whose task i runs ``command`` on run i of ``runs``."""
    return write_sbatch_script(sweep_dir, name, role, command, f"A fine-tuning sweep: {purpose}", sbatch_options,
                               tasks=len(runs), task_argument='"${RUNS[$SLURM_ARRAY_TASK_ID]}"',
                               runs=[sweep_dir / run.run_dir for run in runs], after=after,
                               notes=["Gather the results from this folder with: caffegen sweep --collect ."])


def submit_sweep(features, runs_script):
    """Submit the shared trunk features' job array, if any, then the runs' to start when it succeeded; return both
    job ids (the first None without features)."""
    after = submit(features) if features else None
    return after, submit(runs_script, after)
