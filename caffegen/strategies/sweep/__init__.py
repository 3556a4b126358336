"""Sweeps: one fine-tuning run per freeze point and learning rate, compared in one table and one plot.

One idea a module: ``plan`` (:func:`prepare_sweep` writes a run directory per combination and
``sweep.json``), ``here`` (the runs launched here one after another, :func:`run_here`, or one per
GPU at a time, :func:`run_on_gpus`), ``onslurm`` (the runs as Slurm job arrays,
:func:`write_slurm_scripts`, submitted by :func:`submit_sweep`) and ``results`` (:func:`collect`
reads each run's ``result.json`` into ``results.csv`` and ``results.png``, whenever the runs have
ended).
"""

from caffegen.strategies.sweep.here import LAUNCH_LOG, run_here, run_on_gpus
from caffegen.strategies.sweep.onslurm import feature_groups, submit_sweep, write_slurm_scripts
from caffegen.strategies.sweep.plan import (
    SHARED_FEATURES,
    SWEEP,
    SweepRun,
    combinations,
    load_sweep,
    prepare_sweep,
    sweep_budget,
)
from caffegen.strategies.sweep.results import PLOT, TABLE, collect, plot_sweep, table_lines

__all__ = ["LAUNCH_LOG", "PLOT", "SHARED_FEATURES", "SWEEP", "TABLE", "SweepRun", "collect", "combinations",
           "feature_groups", "load_sweep", "plot_sweep", "prepare_sweep", "run_here", "run_on_gpus", "submit_sweep",
           "sweep_budget", "table_lines", "write_slurm_scripts"]
