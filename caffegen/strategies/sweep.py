"""Sweeps: one fine-tuning run per freeze point and learning rate, compared in one table and one plot.

:func:`prepare_sweep` writes a run directory per combination and ``sweep.json``. The runs are
launched here one after another (:func:`run_here`), one per GPU at a time (:func:`run_on_gpus`),
or as Slurm job arrays (:func:`write_slurm_scripts`, submitted by :mod:`caffegen.strategies.slurm`).
:func:`collect` reads each run's ``result.json`` into ``results.csv`` and ``results.png``, whenever
the runs have ended.
"""

import csv
import io
import json
import subprocess
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from caffegen import __version__
from caffegen.errors import CaffegenError
from caffegen.io.files import built_beside, write_atomic
from caffegen.io.locks import refuse_if_held, sole_lock
from caffegen.io.tables import text_table
from caffegen.job.prepare import prepare
from caffegen.job.rundir import EVAL_DIR, RunDir, read_result, refuse_if_launched
from caffegen.run.cache import store_of
from caffegen.run.evaluate import evaluate_validation, metrics_line
from caffegen.run.launch import launch
from caffegen.run.plots import plain_text
from caffegen.run.report import METRICS
from caffegen.run.runner import summary_lines
from caffegen.run.target import resolve_target
from caffegen.strategies.childlaunch import launch_command
from caffegen.strategies.slurm import FEATURES_SCRIPT, SWEEP_SCRIPT, UNSAFE_NAME, check_slurm, write_sbatch_script

SWEEP = "sweep.json"
TABLE = "results.csv"
PLOT = "results.png"
# The feature stores that the sweep's cached runs share, one per distinct trunk.
SHARED_FEATURES = "features"
LAUNCH_LOG = "launch.log"
SWEEP_LOCK = ".sweep.lock"  # held by the caffegen sweep training the runs here
COLUMNS = ("run", "freeze", "lr", "best_accuracy", "last_accuracy", "mean_class_accuracy", "seconds", "exit_code",
           "status")
NOT_FINISHED = "not finished"


@dataclass(frozen=True)
class SweepRun:
    """One combination of the sweep and its run directory, relative to the sweep directory."""

    run_dir: str
    freeze_upto: str = None
    freeze_from: str = None
    lr: float = None

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


def prepare_sweep(planned, out_dir, force=False, caffe="caffe", echo=None, share_features=True, budget=None,
                  databases=None):
    """Prepare every run of ``planned`` (from :func:`combinations`) and ``sweep.json`` in ``out_dir``.

    Runs with cached features share their feature stores (``features/`` of the sweep) unless
    ``share_features`` is false: runs with identical trunks then compute their features once.
    The directory is built beside its place and renamed into it, so a bad layer name leaves nothing,
    and neither does a run whose estimated memory exceeds ``budget`` (a MemoryBudget) without ``force``.
    With --lmdb, ``databases`` (a DatabaseBuilder) builds the first run's LMDBs, and the other runs hard-link
    them (as they do those of the sweep directory replaced, while the images are unchanged).
    """
    echo = echo or (lambda line: None)
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
                                     staging, caffe, echo, budget, force, databases, reusable))
            reusable.insert(0, staging / run.run_dir)
        _write_sweep_file(staging, runs)
    return runs


def _refuse_if_running(sweep_dir):
    """Refuse to replace a sweep that is still training: here (its lock), or a run at a time (theirs)."""
    refuse_if_held(sweep_dir / SWEEP_LOCK, _sweep_busy(sweep_dir, "replace the sweep"))
    for run_dir in sorted(sweep_dir.iterdir()) if sweep_dir.is_dir() else ():
        if run_dir.is_dir():
            refuse_if_launched(run_dir, "replace the sweep")


def _training_here(sweep_dir):
    """Hold the sweep directory while this process trains its runs."""
    return sole_lock(Path(sweep_dir) / SWEEP_LOCK, _sweep_busy(sweep_dir, "train them again"))


def _sweep_busy(sweep_dir, what):
    """The refusal to ``what`` while the sweep of process ``pid`` trains the runs of ``sweep_dir``, given its pid."""
    return lambda pid: CaffegenError(f"a caffegen sweep (process {pid}) is training these runs: wait for it to end, "
                                     f"or stop it, before you {what}", sweep_dir)


def _prepare_run(run, options, staging, caffe, echo, budget, force, databases, reusable):
    job = prepare(options, staging / run.run_dir, force, caffe, echo, budget=budget, databases=databases,
                  reuse_from=reusable)
    lr = job.manifest.base_lr
    echo(f"prepared {run.run_dir}: freeze {run.freeze}, base_lr {lr:g}, {job.manifest.schedule.max_iter} iterations")
    return replace(run, lr=lr)


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


def run_here(sweep_dir, runs, target=None, echo=None, show_progress=None):
    """Launch and evaluate the runs one after another with ``target``; return {run_dir: error} for runs refused.

    A failing run does not stop the others; Ctrl-C stops the run in progress and the sweep.
    """
    echo = echo or (lambda line: None)
    target = (target or resolve_target()).required()
    with _training_here(sweep_dir):
        return _run_each(sweep_dir, runs, target, echo, show_progress)


def _run_each(sweep_dir, runs, target, echo, show_progress):
    errors = {}
    for number, run in enumerate(runs, start=1):
        echo(f"[{number}/{len(runs)}] {run.run_dir}")
        try:
            run_dir = RunDir(Path(sweep_dir) / run.run_dir)
            result = launch(run_dir, target, echo=echo, show_progress=show_progress)
            for line in summary_lines(result, run_dir.path):
                echo(line)
            if result.exit_code == 0:
                echo(f"evaluation: {metrics_line(evaluate_validation(target, run_dir, echo=echo))}")
        except CaffegenError as error:
            errors[run.run_dir] = str(error)
            echo(f"caffegen: error: {error}")
            continue
        if result.interrupted:
            echo("interrupted: the remaining runs are not started")
            break
    return errors


def run_on_gpus(sweep_dir, runs, gpus, caffe=None, echo=None, poll_seconds=1.0):
    """Launch the runs as ``caffegen launch --gpu ID`` processes, one per GPU at a time.

    Each process writes its report to ``launch.log`` in its run directory. Returns
    {run_dir: error} for runs that ended without a result. Ctrl-C lets the running ones
    snapshot and stop, and starts no more.
    """
    echo = echo or (lambda line: None)
    sweep_dir = Path(sweep_dir)
    with _training_here(sweep_dir):
        return _run_per_gpu(sweep_dir, runs, gpus, caffe, echo, poll_seconds)


def _run_per_gpu(sweep_dir, runs, gpus, caffe, echo, poll_seconds):
    pending, running, errors = list(runs), {}, {}
    try:
        while pending or running:
            for slot, gpu in enumerate(gpus):
                if slot not in running and pending:
                    running[slot] = _start_launch(sweep_dir, pending.pop(0), gpu, caffe, echo)
            _reap(sweep_dir, running, errors, echo)
            time.sleep(poll_seconds)
    except KeyboardInterrupt:  # Ctrl-C reached the launches too, from the terminal
        _stop_running(sweep_dir, running, errors, echo, signal_them=False)
    except BaseException:  # SIGTERM, which reached this process only: each launch stops its Caffe on its own
        _stop_running(sweep_dir, running, errors, echo, signal_them=True)
        raise
    return errors


def _stop_running(sweep_dir, running, errors, echo, signal_them):
    """Let the running launches snapshot and stop (SIGTERM them first where they did not hear the stop)."""
    echo("interrupted: waiting for the running runs to snapshot and stop; the remaining runs are not started")
    for _, _, process in running.values():  # all of them first: none trains on while another one stops
        if signal_them and process.poll() is None:
            process.terminate()
    for run, _, process in running.values():
        process.wait()
        _record_exit(sweep_dir / run.run_dir, process, errors)


def _start_launch(sweep_dir, run, gpu, caffe, echo):
    run_dir = sweep_dir / run.run_dir
    command = launch_command("--evaluate", run_dir=run_dir, caffe=caffe, gpu=gpu)
    echo(f"GPU {gpu}: started {run.run_dir}")
    with open(run_dir / LAUNCH_LOG, "w", encoding="utf-8") as log:
        return run, gpu, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _reap(sweep_dir, running, errors, echo):
    for slot, (run, gpu, process) in list(running.items()):
        if process.poll() is not None:
            del running[slot]
            _record_exit(sweep_dir / run.run_dir, process, errors)
            echo(f"GPU {gpu}: {run.run_dir} ended with exit code {process.returncode}")


def _record_exit(run_dir, process, errors):
    """A run that left no result.json failed before Caffe ran: keep the last line of its report."""
    if read_result(run_dir) is None:
        lines = (run_dir / LAUNCH_LOG).read_text(encoding="utf-8", errors="replace").strip().splitlines()
        errors[run_dir.name] = lines[-1] if lines else f"caffegen launch exited with {process.returncode}"


def feature_groups(sweep_dir, runs):
    """{feature store: [the runs reading it]} for the sweep's cached runs, in the order of ``runs``."""
    groups = {}
    for run in runs:
        run_dir = RunDir(Path(sweep_dir) / run.run_dir)
        if run_dir.caches_features:
            groups.setdefault(store_of(run_dir).path, []).append(run)
    return groups


def write_slurm_scripts(sweep_dir, runs, sbatch_options=(), caffe=None):
    """Write the sweep's job arrays; return (``slurm_features.sh`` or None, ``slurm.sh``).

    Task i of ``slurm.sh`` launches run i. When runs cache their features, task j of
    ``slurm_features.sh`` first computes the features of the j-th distinct trunk, once for all
    the runs that share it; ``slurm.sh`` is then submitted to start after it (``slurm.submit``).
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


def collect(sweep_dir, runs=None, errors=None):
    """Read each run's result.json; write ``results.csv`` and ``results.png``; return the table's rows."""
    sweep_dir = Path(sweep_dir)
    runs = load_sweep(sweep_dir) if runs is None else runs
    rows = [_row(sweep_dir, run, (errors or {}).get(run.run_dir)) for run in runs]
    write_atomic(sweep_dir / TABLE, _csv_text(rows))
    plot_sweep(rows, [_accuracy_curve(sweep_dir / run.run_dir) for run in runs], sweep_dir / PLOT)
    return rows


def _row(sweep_dir, run, error):
    result, evaluated = read_result(sweep_dir / run.run_dir), sweep_dir / run.run_dir / EVAL_DIR / METRICS
    metrics = json.loads(evaluated.read_text(encoding="utf-8")) if evaluated.is_file() else {}
    return {"run": run.run_dir, "freeze": run.freeze, "lr": run.lr,
            "best_accuracy": result and result.best_accuracy, "last_accuracy": result and result.last_accuracy,
            "mean_class_accuracy": metrics.get("mean_class_accuracy"),
            "seconds": result and result.seconds, "exit_code": result and result.exit_code,
            "status": f"error: {error}" if error else _status(result)}


def _status(result):
    if result is None:
        return NOT_FINISHED
    if result.diagnosis:
        return result.diagnosis
    if result.interrupted:
        return "interrupted"
    return "ok" if result.exit_code == 0 else f"exit {result.exit_code}"


def _csv_text(rows):
    text = io.StringIO()
    writer = csv.DictWriter(text, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: "" if value is None else value for key, value in row.items()} for row in rows)
    return text.getvalue()


def table_lines(rows):
    """The rows as an aligned text table for the terminal."""
    header = ("run", "freeze", "lr", "best acc", "last acc", "class acc", "time", "exit", "status")
    return text_table(header, [(row["run"], row["freeze"], _number(row["lr"], "g"), _number(row["best_accuracy"], ".4f"),
                                _number(row["last_accuracy"], ".4f"), _number(row["mean_class_accuracy"], ".4f"),
                                _number(row["seconds"], ".1f", " s"),
                                _number(row["exit_code"], "d"), row["status"]) for row in rows])


def _number(value, spec, unit=""):
    return "-" if value is None else f"{value:{spec}}{unit}"


def _accuracy_curve(run_dir):
    """(iterations, validation accuracies) from a run's curves.csv; empty when it has none."""
    path = run_dir / "curves.csv"
    if not path.is_file():
        return [], []
    with path.open(newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        column = next((key for key in reader.fieldnames or () if key.startswith("test/") and key.endswith("accuracy")),
                      None)
        points = [(int(record["iteration"]), float(record[column])) for record in reader if column and record[column]]
    return [i for i, _ in points], [value for _, value in points]


@plain_text
def plot_sweep(rows, curves, path):
    """Draw each run's best validation accuracy as a bar (its mean class accuracy as a mark), and all validation curves, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 1.6 + 0.45 * max(len(rows), 6)), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    bars, lines = figure.subplots(1, 2, width_ratios=(1, 1.3))
    _draw_bars(bars, rows)
    _draw_curves(lines, rows, curves)
    figure.suptitle("Sweep: validation accuracy per run")
    image = io.BytesIO()
    figure.savefig(image, format="png")
    write_atomic(Path(path), image.getvalue())


def _draw_bars(axis, rows):
    positions = range(len(rows))
    values = [row["best_accuracy"] or 0.0 for row in rows]
    colors = ["tab:blue" if row["status"] == "ok" else "tab:red" for row in rows]
    axis.barh(positions, values, color=colors)
    for position, row, value in zip(positions, rows, values):
        label = f"{value:.3f}" if row["best_accuracy"] is not None else ""
        if row["status"] != "ok":
            label = f"{label}  {row['status']}".strip()
        axis.text(value + 0.01, position, label, va="center", fontsize="small")
    evaluated = [(position, row["mean_class_accuracy"]) for position, row in zip(positions, rows)
                 if row["mean_class_accuracy"] is not None]
    if evaluated:
        axis.scatter([value for _, value in evaluated], [position for position, _ in evaluated], marker="D",
                     color="black", zorder=3, label="mean class accuracy (final model)")
        axis.legend(loc="lower right", fontsize="small")
    axis.set_yticks(list(positions), [row["run"] for row in rows])
    axis.invert_yaxis()
    axis.set_xlim(0, 1.3)
    axis.set_xticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    axis.set_xlabel("best validation accuracy")
    axis.grid(True, axis="x", alpha=0.3)


def _draw_curves(axis, rows, curves):
    for row, (iterations, values) in zip(rows, curves):
        if iterations:
            axis.plot(iterations, values, marker="o" if len(values) < 30 else None, markersize=3, label=row["run"])
    axis.set_xlabel("iteration")
    axis.set_ylabel("validation accuracy")
    axis.set_ylim(-0.02, 1.02)
    axis.grid(True, alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(loc="lower right", fontsize="small")

