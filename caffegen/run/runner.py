"""Running one ``caffe train`` and watching it line by line.

Caffe's output goes to ``train.log``; a progress bar shows iteration, loss and the latest
validation accuracy; ``curves.csv``, ``curves.png`` and ``result.json`` are written as the run
ends. A diagnosed failure (a loss gone to NaN, a weights shape mismatch, …) stops the run early.
Ctrl-C asks Caffe to snapshot and stop (``-sigint_effect stop``).
"""

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from caffegen.io.files import write_atomic
from caffegen.io.quoting import sh_command
from caffegen.job.rundir import RESULT, newest_snapshot, relative_record
from caffegen.run.caffelog import LogWatcher, parse_log
from caffegen.run.curves import plot_curves, write_curves_csv
from caffegen.run.diagnose import Diagnosis

INTERRUPTED = 130
DIAGNOSED = 3


@dataclass
class LaunchResult:
    """How a run ended: Caffe's exit code, ours, the diagnosis, the final model and the curves."""

    exit_code: int
    caffe_exit_code: int
    watcher: LogWatcher
    records: list
    diagnosis: object = None
    interrupted: bool = False
    seconds: float = 0.0
    final_model: Path = None
    notes: list = field(default_factory=list)


def run_caffe_train(caffe, arguments, run_dir, history, echo, show_progress, memory=None):
    """Run ``caffe`` with ``arguments`` in ``run_dir``, after the ``history`` of records of an earlier run.

    ``memory`` is caffegen's estimate of the run's memory and its fix, for an out-of-memory diagnosis.
    """
    started = time.monotonic()
    watcher = LogWatcher(memory)
    env = dict(os.environ, GLOG_logtostderr="1")
    process = subprocess.Popen([str(caffe), *arguments], cwd=run_dir, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
    interrupts = []
    previous = signal.signal(signal.SIGINT, lambda *_: _interrupt(process, interrupts))
    diagnosis = None
    try:
        with (run_dir / "train.log").open("a", encoding="utf-8") as log, _progress(watcher, show_progress) as bar:
            for line in process.stdout:
                log.write(line)
                log.flush()
                diagnosis = _watch(watcher.feed(line), diagnosis, process)
                _update(bar, watcher)
            diagnosis = _watch(watcher.close(), diagnosis, process)
        code = process.wait()
        diagnosis = _watch(watcher.ended(code), diagnosis, process)
    finally:
        signal.signal(signal.SIGINT, previous)
    stopped = bool(interrupts) or watcher.stopped_early  # Ctrl-C here, or a SIGINT sent to Caffe itself
    result = LaunchResult(code, code, watcher, history + watcher.records, diagnosis, stopped,
                          time.monotonic() - started)
    _finish(result, run_dir)
    return result


def _watch(events, diagnosis, process):
    """The first diagnosis among ``events`` (or the one already found); stop Caffe when it says so."""
    for event in events:
        if isinstance(event, Diagnosis) and diagnosis is None:
            diagnosis = event
            if event.stop and process.poll() is None:
                process.terminate()
    return diagnosis


def _interrupt(process, interrupts):
    interrupts.append(time.monotonic())
    if process.poll() is None:
        process.send_signal(signal.SIGINT if len(interrupts) == 1 else signal.SIGTERM)


def _progress(watcher, show):
    return tqdm(total=watcher.max_iter or 0, unit="iter", disable=None if show is None else not show,
                dynamic_ncols=True, leave=True)


def _update(bar, watcher):
    if watcher.max_iter and bar.total != watcher.max_iter:
        bar.total = watcher.max_iter
        bar.refresh()
    if watcher.iteration is not None and watcher.iteration > bar.n:
        bar.update(watcher.iteration - bar.n)
        postfix = {}
        loss = next((record["loss"] for record in reversed(watcher.records) if record.get("loss") is not None), None)
        if loss is not None:
            postfix["loss"] = f"{loss:.4g}"
        accuracy = watcher.latest_test.get("test/accuracy")
        if accuracy is not None:
            postfix["val acc"] = f"{accuracy:.3f}"
        bar.set_postfix(postfix, refresh=False)


def _finish(result, run_dir):
    """Curves, the final model, and the exit code that tells how the run ended."""
    if result.records:
        write_curves_csv(result.records, run_dir / "curves.csv")
        plot_curves(result.records, run_dir / "curves.png")
    models = [Path(path) for path in result.watcher.snapshots if str(path).endswith(".caffemodel")]
    if models:
        result.final_model = run_dir / models[-1]
    if result.diagnosis is not None and result.diagnosis.stop:
        result.exit_code = DIAGNOSED
    elif result.caffe_exit_code < 0:
        result.exit_code = 128 - result.caffe_exit_code
    elif result.caffe_exit_code == 0 and result.interrupted:
        result.exit_code = INTERRUPTED
    write_atomic(run_dir / RESULT, json.dumps(result_summary(result, run_dir), indent=2) + "\n")


def result_summary(result, run_dir):
    """What a finished run amounts to, as stored in ``run_dir``'s result.json: for people, sweeps and later stages.

    The final model is named relative to the run directory, as every file a run directory records.
    """
    accuracies = validation_accuracies(result.records)
    best = max(accuracies, key=lambda pair: pair[1]) if accuracies else None
    return {
        "exit_code": result.exit_code,
        "caffe_exit_code": result.caffe_exit_code,
        "diagnosis": result.diagnosis.kind if result.diagnosis else None,
        "interrupted": result.interrupted,
        "seconds": round(result.seconds, 3),
        "iterations": result.records[-1]["iteration"] if result.records else 0,
        "last_accuracy": accuracies[-1][1] if accuracies else None,
        "best_accuracy": best[1] if best else None,
        "best_iteration": best[0] if best else None,
        "final_model": relative_record(run_dir, result.final_model) if result.final_model else None,
    }


def earlier_records(run_dir, upto):
    """The records of a run's train.log before iteration ``upto``, where a resumed run takes over."""
    log = Path(run_dir) / "train.log"
    if not log.is_file():
        return []
    with log.open(encoding="utf-8", errors="replace") as lines:
        watcher, _ = parse_log(lines)
    return [record for record in watcher.records if record["iteration"] < upto]


def validation_accuracies(records):
    """(iteration, accuracy) for every validation pass in ``records``."""
    return [(record["iteration"], value) for record in records for key, value in record.items()
            if key.startswith("test/") and key.endswith("accuracy")]


def summary_lines(result, run_dir):
    """What the user reads when the run ends: problem, accuracy, model, where everything is."""
    lines = []
    if result.diagnosis is not None:
        lines.append(f"problem: {result.diagnosis.message}")
    accuracies = validation_accuracies(result.records)
    if accuracies:
        best = max(accuracies, key=lambda pair: pair[1])
        lines.append(f"validation accuracy: last {accuracies[-1][1]:.4f} (iteration {accuracies[-1][0]}), "
                     f"best {best[1]:.4f} (iteration {best[0]})")
    if result.final_model:
        lines.append(f"final model: {result.final_model}")
    if result.interrupted:
        state = newest_snapshot(run_dir) if result.watcher.snapshots else None
        where = f"; snapshot: {state}" if state else ""
        lines.append(f"interrupted at iteration {result.watcher.iteration}{where}; "
                     f"continue with: {sh_command('caffegen', 'launch', run_dir, '--resume')}")
    lines += result.notes
    log = Path(run_dir) / "train.log"
    logs = log if log.exists() else Path(run_dir) / "stage*" / "train.log"
    lines.append(f"{result.seconds:.1f} s; log: {logs}"
                 + (f"; curves: {Path(run_dir) / 'curves.png'}" if result.records else ""))
    return lines
