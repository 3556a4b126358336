"""The runs that trackers are given for the folders a user names: a run directory is one run, a sweep directory is
its runs, compared as one group (one TensorBoard log dir with the HParams table, one MLflow parent run)."""

from pathlib import Path

from caffegen.job.rundir import RunDir
from caffegen.run.track.tracker import Group, Tracked
from caffegen.strategies.sweep.plan import SWEEP, load_sweep


def tracked_runs(folders):
    """The :class:`Tracked` runs of ``folders`` (run or sweep directories), each once."""
    tracked = []
    for folder in folders:
        folder = Path(folder).resolve()
        tracked += sweep_runs(folder) if (folder / SWEEP).is_file() else [Tracked(RunDir(folder), folder.name, folder)]
    unique = {item.run.path: item for item in tracked}
    return list(unique.values())


def sweep_runs(sweep_dir):
    """The runs of the sweep in ``sweep_dir``, each with its freeze point and learning rate as its hparams."""
    runs = load_sweep(sweep_dir)
    group = Group(sweep_dir, sweep_dir.name, tuple(run.run_dir for run in runs))
    return [Tracked(RunDir(sweep_dir / run.run_dir), run.run_dir, sweep_dir, group,
                    {"freeze": run.freeze, "lr": run.lr}) for run in runs]
