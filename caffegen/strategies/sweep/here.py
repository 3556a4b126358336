"""Training a sweep's runs on this machine: one after another in this process, or one per GPU at a time.

:func:`run_here` launches each run with the command's Target; :func:`run_on_gpus` starts a
``caffegen launch --gpu ID`` per GPU (:mod:`caffegen.strategies.childlaunch`), each writing its
report to ``launch.log`` in its run directory. Both hold the sweep's lock while they train.
"""

import subprocess
import time
from pathlib import Path

from caffegen.errors import CaffegenError
from caffegen.job.rundir import RunDir, read_result
from caffegen.reporting import SilentReporter
from caffegen.run.evaluate import evaluate_validation, metrics_line
from caffegen.run.launch import launch
from caffegen.run.runner import summary_lines
from caffegen.run.target import resolve_target
from caffegen.strategies.childlaunch import launch_command
from caffegen.strategies.sweep.plan import training_here

LAUNCH_LOG = "launch.log"


def run_here(sweep_dir, runs, target=None, reporter=None):
    """Launch and evaluate the runs one after another with ``target``; return {run_dir: error} for runs refused.

    A failing run does not stop the others; Ctrl-C stops the run in progress and the sweep.
    """
    reporter = reporter or SilentReporter()
    target = (target or resolve_target()).required()
    with training_here(sweep_dir):
        return _run_each(sweep_dir, runs, target, reporter)


def _run_each(sweep_dir, runs, target, reporter):
    errors = {}
    for number, run in enumerate(runs, start=1):
        reporter.line(f"[{number}/{len(runs)}] {run.run_dir}")
        try:
            run_dir = RunDir(Path(sweep_dir) / run.run_dir)
            result = launch(run_dir, target, reporter=reporter)
            for line in summary_lines(result, run_dir.path):
                reporter.line(line)
            if result.exit_code == 0:
                reporter.line(f"evaluation: {metrics_line(evaluate_validation(target, run_dir, reporter=reporter))}")
        except CaffegenError as error:
            errors[run.run_dir] = str(error)
            reporter.line(f"caffegen: error: {error}")
            continue
        if result.interrupted:
            reporter.line("interrupted: the remaining runs are not started")
            break
    return errors


def run_on_gpus(sweep_dir, runs, gpus, caffe=None, reporter=None, poll_seconds=1.0):
    """Launch the runs as ``caffegen launch --gpu ID`` processes, one per GPU at a time.

    Each process writes its report to ``launch.log`` in its run directory. Returns
    {run_dir: error} for runs that ended without a result. Ctrl-C lets the running ones
    snapshot and stop, and starts no more.
    """
    reporter = reporter or SilentReporter()
    sweep_dir = Path(sweep_dir)
    with training_here(sweep_dir):
        return _run_per_gpu(sweep_dir, runs, gpus, caffe, reporter, poll_seconds)


def _run_per_gpu(sweep_dir, runs, gpus, caffe, reporter, poll_seconds):
    pending, running, errors = list(runs), {}, {}
    try:
        while pending or running:
            for slot, gpu in enumerate(gpus):
                if slot not in running and pending:
                    running[slot] = _start_launch(sweep_dir, pending.pop(0), gpu, caffe, reporter)
            _reap(sweep_dir, running, errors, reporter)
            time.sleep(poll_seconds)
    except KeyboardInterrupt:  # Ctrl-C reached the launches too, from the terminal
        _stop_running(sweep_dir, running, errors, reporter, signal_them=False)
    except BaseException:  # SIGTERM, which reached this process only: each launch stops its Caffe on its own
        _stop_running(sweep_dir, running, errors, reporter, signal_them=True)
        raise
    return errors


def _stop_running(sweep_dir, running, errors, reporter, signal_them):
    """Let the running launches snapshot and stop (SIGTERM them first where they did not hear the stop)."""
    reporter.line("interrupted: waiting for the running runs to snapshot and stop; the remaining runs are not started")
    for _, _, process in running.values():  # all of them first: none trains on while another one stops
        if signal_them and process.poll() is None:
            process.terminate()
    for run, _, process in running.values():
        process.wait()
        _record_exit(sweep_dir / run.run_dir, process, errors)


def _start_launch(sweep_dir, run, gpu, caffe, reporter):
    run_dir = sweep_dir / run.run_dir
    command = launch_command("--evaluate", run_dir=run_dir, caffe=caffe, gpu=gpu)
    reporter.line(f"GPU {gpu}: started {run.run_dir}")
    with open(run_dir / LAUNCH_LOG, "w", encoding="utf-8") as log:
        return run, gpu, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _reap(sweep_dir, running, errors, reporter):
    for slot, (run, gpu, process) in list(running.items()):
        if process.poll() is not None:
            del running[slot]
            _record_exit(sweep_dir / run.run_dir, process, errors)
            reporter.line(f"GPU {gpu}: {run.run_dir} ended with exit code {process.returncode}")


def _record_exit(run_dir, process, errors):
    """A run that left no result.json failed before Caffe ran: keep the last line of its report."""
    if read_result(run_dir) is None:
        lines = (run_dir / LAUNCH_LOG).read_text(encoding="utf-8", errors="replace").strip().splitlines()
        errors[run_dir.name] = lines[-1] if lines else f"caffegen launch exited with {process.returncode}"
