"""A sweep's plan: one run directory per freeze point × learning rate, prepared together and listed in sweep.json.

:func:`combinations` names the runs, :func:`prepare_sweep` writes them beside their place and renames
them in whole, :func:`load_sweep` reads them back; the sweep's lock (:func:`training_here`) keeps a
sweep that trains its runs here from being replaced.
"""

import json
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from caffegen import __version__
from caffegen.errors import CaffegenError
from caffegen.io.files import built_beside, write_atomic
from caffegen.io.locks import refuse_if_held, sole_lock
from caffegen.job.prepare import prepare
from caffegen.job.rundir import RunDir, refuse_if_launched
from caffegen.reporting import SilentReporter
from caffegen.run.target import memory_budget
from caffegen.strategies.slurm import UNSAFE_NAME, node_budget

SWEEP = "sweep.json"
# The feature stores that the sweep's cached runs share, one per distinct trunk.
SHARED_FEATURES = "features"
SWEEP_LOCK = ".sweep.lock"  # held by the caffegen sweep training the runs here


@dataclass(frozen=True)
class SweepRun:
    """One combination of the sweep and its run directory, relative to the sweep directory."""

    run_dir: str
    freeze_upto: str = None
    freeze_from: str = None
    lr: float = None
    # A cached run's CachePlan as prepare worked it out, when this process prepared the run; None: work it out.
    cache_plan: object = field(default=None, compare=False, repr=False)

    @property
    def freeze(self):
        """The freeze point in words: ``upto conv5``, ``from fc6`` or ``none``."""
        if self.freeze_upto:
            return f"upto {self.freeze_upto}"
        return f"from {self.freeze_from}" if self.freeze_from else "none"


def combinations(options, freeze_upto=(), freeze_from=(), learning_rates=()):
    """(SweepRun, JobOptions) for every freeze point × learning rate, the freeze points first."""
    points = [(layer, None) for layer in freeze_upto] + [(None, layer) for layer in freeze_from] or [(None, None)]
    planned = []
    for upto, start in points:
        for lr in learning_rates or [None]:
            run = SweepRun(_run_name(upto, start, lr), upto, start, lr)
            job = replace(options, freeze_upto=upto, freeze_from=start,
                          base_lr=options.base_lr if lr is None else lr)
            planned.append((run, job))
    names = [run.run_dir for run, _ in planned]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise CaffegenError(f"the sweep lists the run {', '.join(twice)} more than once; give each layer and "
                            "learning rate once")
    return planned


def _run_name(upto, start, lr):
    parts = [f"upto-{upto}" if upto else None, f"from-{start}" if start else None,
             f"lr-{lr:g}" if lr is not None else None]
    return UNSAFE_NAME.sub("-", "_".join(part for part in parts if part)) or "run"


def prepare_sweep(planned, out_dir, force=False, caffe="caffe", reporter=None, share_features=True, budget=None,
                  databases=None):
    """Prepare every run of ``planned`` (from :func:`combinations`) and ``sweep.json`` in ``out_dir``.

    Runs with cached features share their feature stores (``features/`` of the sweep) unless
    ``share_features`` is false: runs with identical trunks then compute their features once.
    The directory is built beside its place and renamed into it, so a bad layer name leaves nothing,
    and neither does a run whose estimated memory exceeds ``budget`` (a MemoryBudget) without ``force``.
    With --lmdb, ``databases`` (a DatabaseBuilder) builds the first run's LMDBs, and the other runs hard-link
    them (as they do those of the sweep directory replaced, while the images are unchanged).
    """
    reporter = reporter or SilentReporter()
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise CaffegenError("sweep directory exists; pass --force to replace it, or gather it with --collect",
                            out_dir)
    _refuse_if_running(out_dir)
    with built_beside(out_dir) as staging:
        shared = Path("..") / SHARED_FEATURES if share_features else None
        runs, reusable = [], [out_dir / run.run_dir for run, _ in planned]
        for run, options in planned:
            runs.append(_prepare_run(run, replace(options, feature_store=shared if options.cache_features else None),
                                     staging, caffe, reporter, budget, force, databases, reusable))
            reusable.insert(0, staging / run.run_dir)
        _write_sweep_file(staging, runs)
    return [_in_place(out_dir, run) for run in runs]


def sweep_budget(device, sbatch_options=None):
    """The memory each run of a sweep may take: on Slurm (with ``sbatch_options``) a node's, as
    :func:`~caffegen.strategies.slurm.node_budget` knows it; else this machine's for ``device``, where each run
    trains alone."""
    return memory_budget(device) if sbatch_options is None else node_budget(sbatch_options, device)


def _refuse_if_running(sweep_dir):
    """Refuse to replace a sweep that is still training: here (its lock), or a run at a time (theirs)."""
    refuse_if_held(sweep_dir / SWEEP_LOCK, _sweep_busy(sweep_dir, "replace the sweep"))
    for run_dir in sorted(sweep_dir.iterdir()) if sweep_dir.is_dir() else ():
        if run_dir.is_dir():
            refuse_if_launched(run_dir, "replace the sweep")


def training_here(sweep_dir):
    """Hold the sweep directory while this process trains its runs."""
    return sole_lock(Path(sweep_dir) / SWEEP_LOCK, _sweep_busy(sweep_dir, "train them again"))


def _sweep_busy(sweep_dir, what):
    """The refusal to ``what`` while the sweep of process ``pid`` trains the runs of ``sweep_dir``, given its pid."""
    return lambda pid: CaffegenError(f"a caffegen sweep (process {pid}) is training these runs: wait for it to end, "
                                     f"or stop it, before you {what}", sweep_dir)


def _prepare_run(run, options, staging, caffe, reporter, budget, force, databases, reusable):
    job = prepare(options, staging / run.run_dir, force, caffe, reporter, budget=budget, databases=databases,
                  reuse_from=reusable)
    lr = job.manifest.base_lr
    reporter.line(f"prepared {run.run_dir}: freeze {run.freeze}, base_lr {lr:g}, "
                  f"{job.manifest.schedule.max_iter} iterations")
    return replace(run, lr=lr, cache_plan=job.cache_plan)


def _in_place(sweep_dir, run):
    """``run`` with its cache plan moved to where its run directory lies now that the sweep took its place."""
    if run.cache_plan is None:
        return run
    return replace(run, cache_plan=run.cache_plan.moved_to(RunDir(sweep_dir / run.run_dir)))


def _write_sweep_file(sweep_dir, runs):
    data = {"caffegen": __version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "runs": [{"run_dir": run.run_dir, "freeze_upto": run.freeze_upto, "freeze_from": run.freeze_from,
                      "lr": run.lr} for run in runs]}
    write_atomic(sweep_dir / SWEEP, json.dumps(data, indent=2) + "\n")


def load_sweep(sweep_dir):
    """The runs listed in a sweep directory's ``sweep.json``."""
    path = Path(sweep_dir) / SWEEP
    if not path.is_file():
        raise CaffegenError(f"not a caffegen sweep directory (no {SWEEP}); create one with caffegen sweep -o DIR",
                            sweep_dir)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))["runs"]
        return [SweepRun(entry["run_dir"], entry["freeze_upto"], entry["freeze_from"], entry["lr"])
                for entry in entries]
    except (ValueError, KeyError, TypeError) as error:
        raise CaffegenError(f"unreadable sweep file ({error}); prepare the sweep again", path) from None
