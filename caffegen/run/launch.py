"""Launching a prepared run, a staged one, or a cached one with the real Caffe.

Before Caffe starts: the device (a CPU-only Caffe never gets -gpu), solver_mode, the labels of
the lists, and the weights against the net. Then :mod:`caffegen.run.runner` runs and watches
``caffe train``; ``--resume`` continues from the newest snapshot, with the curves continuing too.
"""

from dataclasses import dataclass

from caffegen.errors import CaffegenError, Terminated
from caffegen.io.prototxt import read_net
from caffegen.job.memorycheck import run_check
from caffegen.job.rundir import (
    CURVES_CSV,
    CURVES_PNG,
    EVENTS,
    SNAPSHOT_NAME,
    RunDir,
    newest_snapshot,
    read_result,
    recorded_path,
    write_result,
)
from caffegen.job.scripts import caffe_arguments
from caffegen.net.inspect import preflight
from caffegen.reporting import SilentReporter
from caffegen.run.cache import run_cached
from caffegen.run.caffelog import LogWatcher
from caffegen.run.curves import plot_curves, write_curves_csv
from caffegen.run.runner import LaunchResult, earlier_records, result_summary, run_caffe_train
from caffegen.run.target import memory_budget, resolve_target


def launch(run_dir, target=None, resume=False, reporter=None):
    """Run ``caffe train`` for the run directory (a path or a :class:`RunDir`) and watch it; see :class:`LaunchResult`.

    ``target`` (a :class:`~caffegen.run.target.Target`) is the Caffe and the device; by default the
    Caffe found as ``caffegen launch`` finds it, on the device the run was prepared for.
    """
    target = (target or resolve_target()).required()
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    with run.launching():
        return launch_run(run, target, resume, reporter or SilentReporter())


def launch_run(run, target, resume, reporter):
    """Launch the :class:`RunDir` ``run`` with ``target``: in stages, on cached features, or as one run."""
    if run.stages:
        return launch_stages(run, target, resume, reporter)
    if run.caches_features:
        if resume:
            raise CaffegenError("a run with cached features does not resume; launch it again: the cached "
                                "features are reused, only the head trains again", run.path)
        return run_cached(run, target, reporter)
    device = target.launch_device(run.device, reporter)
    run.match_solver_mode(device, reporter)
    run.check_labels()
    arguments = _arguments(run, device, resume, reporter)
    history = earlier_records(run.path, _iteration_of(arguments)) if resume else []
    memory = run_check(run, memory_budget(device), device).advice()
    return run_caffe_train(target.caffe, arguments, run.path, history, reporter, memory)


def launch_stages(run, target, resume, reporter):
    """Run the stages of a staged job in order, each from the final weights of the one before.

    With ``resume``, finished stages are skipped and the first unfinished one resumes from its
    newest snapshot (or starts over when it has none). The stages' curves are joined, with the
    stage boundaries marked.
    """
    results, offsets, offset = [], [], 0
    entries = run.manifest.stages
    try:
        with reporter.recording(run.path / EVENTS):
            for number, (entry, stage) in enumerate(zip(entries, run.stages), start=1):
                offsets.append(offset)
                offset += entry.max_iter
                finished = _finished(stage.path)
                if resume and finished:
                    results.append(finished)
                    continue
                started = StageStarted(number, len(entries), _stage_words(entry), offsets[-1])
                results.append(_run_stage(stage, started, target, resume, reporter))
                if results[-1].exit_code != 0:
                    break
    except Terminated as terminated:  # the stage stopped with a snapshot: the whole run's result is still written
        if terminated.result is not None:
            terminated.result = _joined(run.path, results + [terminated.result], offsets)
        raise
    return _joined(run.path, results, offsets)


@dataclass
class StageStarted:
    """Stage ``stage`` of ``stages`` begins; its iterations count from ``first_iteration`` of the whole run."""

    stage: int
    stages: int
    description: str
    first_iteration: int


@dataclass
class StageEnded:
    """Stage ``stage`` ended with ``exit_code`` after ``seconds``."""

    stage: int
    exit_code: int
    seconds: float


def _run_stage(stage, started, target, resume, reporter):
    """Run one stage, its start and end told as events."""
    reporter.line(f"stage {started.stage}/{started.stages}: {started.description}")
    reporter.event(started)
    resumable = resume and any(stage.snapshots.glob("*.solverstate"))
    result = launch_run(stage, target, resumable, reporter)
    reporter.event(StageEnded(started.stage, result.exit_code, round(result.seconds, 3)))
    return result


def _finished(stage_dir):
    """The result of a stage that ran to its end, rebuilt from its files, or None."""
    summary = read_result(stage_dir)
    if summary is None or summary.exit_code != 0:
        return None
    records = earlier_records(stage_dir, summary.iterations + 1)
    final = recorded_path(stage_dir, summary.final_model) if summary.final_model else None
    return LaunchResult(0, 0, LogWatcher(), records, seconds=summary.seconds, final_model=final)


def _stage_words(stage):
    freeze = stage.freeze
    point = (f"frozen up to {freeze.upto}" if freeze.upto else
             f"trained from {freeze.start}" if freeze.start else "nothing frozen")
    return f"{point}, base_lr {stage.base_lr:g}, {stage.epochs} epochs"


def _joined(run_dir, results, offsets):
    """One result for the whole staged run: records on one iteration axis, the last stage's outcome."""
    records = [dict(record, iteration=record["iteration"] + offset)
               for result, offset in zip(results, offsets) for record in result.records]
    last = results[-1]
    joined = LaunchResult(last.exit_code, last.caffe_exit_code, last.watcher, records, last.diagnosis,
                          last.interrupted, sum(result.seconds for result in results), last.final_model,
                          caffe_version=last.caffe_version)
    if records:
        write_curves_csv(records, run_dir / CURVES_CSV)
        plot_curves(records, run_dir / CURVES_PNG, stage_boundaries=offsets[1:len(results)])
    write_result(run_dir, result_summary(joined, run_dir))
    return joined


def preflight_weights(run, weights, reporter):
    """Check the weights against the run's net before Caffe spends minutes loading them."""
    for warning in preflight(read_net(run.train_val).net, weights, list(run.input_shape),
                             allow_unrelated=True):
        reporter.line(warning)


def _arguments(run, device, resume, reporter):
    if resume:
        snapshot = newest_snapshot(run.path, reporter).relative_to(run.path)
        arguments = caffe_arguments(snapshot=snapshot, gpu=device.gpu_flag)
    else:
        weights = run.weights()
        preflight_weights(run, weights, reporter)
        arguments = caffe_arguments(weights=weights, gpu=device.gpu_flag)
    return arguments + ["-sigint_effect", "stop"]


def _iteration_of(arguments):
    """The iteration the -snapshot argument resumes from."""
    snapshot = arguments[arguments.index("-snapshot") + 1]
    return int(SNAPSHOT_NAME.search(str(snapshot)).group(1))
