"""Running one ``caffe train`` and watching it line by line.

Caffe's output goes to ``train.log``; a progress bar shows iteration, loss and the latest
validation accuracy; ``curves.csv``, ``curves.png`` and ``result.json`` are written as the run
ends. A diagnosed failure (a loss gone to NaN, a weights shape mismatch, …) stops the run early.
Ctrl-C asks Caffe to snapshot and stop (``-sigint_effect stop``).
"""

import contextlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from caffegen.errors import CaffegenError, Terminated, cannot_write
from caffegen.io.quoting import sh_command
from caffegen.job.manifest import RunResult
from caffegen.job.rundir import CURVES_CSV, CURVES_PNG, EVENTS, LOG, newest_snapshot, relative_record, write_result
from caffegen.run.caffelog import LogWatcher, TestResult, parse_log
from caffegen.run.curves import plot_curves, write_curves_csv
from caffegen.run.diagnose import Diagnosis
from caffegen.run.locate import ask_caffe_version

INTERRUPTED = 130
DIAGNOSED = 3
CURVES_EVERY_S = 10  # curves.png is redrawn at a test pass at most this often while the run goes on
STOP_WAIT_S = 60  # how long a Caffe stopped because caffegen ends may take to snapshot


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
    caffe_version: str = None


def run_caffe_train(caffe, arguments, run_dir, history, reporter, memory=None):
    """Run ``caffe`` with ``arguments`` in ``run_dir``, after the ``history`` of records of an earlier run.

    ``memory`` is caffegen's estimate of the run's memory and its fix, for an out-of-memory diagnosis.
    Ctrl-C and SIGTERM both make Caffe snapshot and stop, and what it says on the way is read to its
    end; after SIGTERM, the run's records written, Terminated is raised.
    """
    started = time.monotonic()
    version = ask_caffe_version(caffe)
    watcher = LogWatcher(memory)
    env = dict(os.environ, GLOG_logtostderr="1")
    process = subprocess.Popen([str(caffe), *arguments], cwd=run_dir, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
    caffe_version = version()  # answered while Caffe starts; its output waits in the pipe
    interrupts, terminations = [], []
    with _signals_stop(process, interrupts, terminations):
        diagnosis, code = _follow(process, watcher, run_dir, history, reporter)
    stopped = bool(interrupts) or watcher.stopped_early  # Ctrl-C here, or a SIGINT sent to Caffe itself
    result = LaunchResult(code, code, watcher, history + watcher.records, diagnosis, stopped,
                          time.monotonic() - started, caffe_version=caffe_version)
    _finish(result, run_dir)
    if terminations:
        raise Terminated(result)
    return result


@contextlib.contextmanager
def _signals_stop(process, interrupts, terminations):
    """While Caffe trains, SIGINT and SIGTERM ask it to snapshot and stop (a second one stops it at once)
    instead of cutting caffegen's reading of its output short."""
    def terminate(*_):
        terminations.append(time.monotonic())
        _interrupt(process, interrupts)
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, lambda *_: _interrupt(process, interrupts)),
                signal.SIGTERM: signal.signal(signal.SIGTERM, terminate)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _follow(process, watcher, run_dir, history, reporter):
    """Follow Caffe's output to its end, into train.log, events.jsonl, the progress shown and the curves;
    return (the first diagnosis, Caffe's exit code)."""
    diagnosis = None
    with (run_dir / LOG).open("ab", buffering=0) as log, reporter.recording(run_dir / EVENTS), \
            _Curves(run_dir, history) as curves, reporter.progress(watcher.max_iter, "iter", "iteration") as progress:

        def take(events):
            nonlocal diagnosis
            for event in events:
                reporter.event(event)
            diagnosis = _watch(events, diagnosis, process)
            _show(progress, watcher, events)
            curves.refresh(watcher, events)

        try:
            for line in process.stdout:
                _log(log, line, run_dir)
                take(watcher.feed(line))
        except BaseException:  # caffegen itself is ending (a full disk): Caffe snapshots and stops
            _stop_and_log(process, log)
            raise
        take(watcher.close())
        code = process.wait()
        take(watcher.ended(code))
    return diagnosis, code


def _watch(events, diagnosis, process):
    """The first diagnosis among ``events`` (or the one already found); stop Caffe when it says so."""
    for event in events:
        if isinstance(event, Diagnosis) and diagnosis is None:
            diagnosis = event
            if event.stop and process.poll() is None:
                process.terminate()
    return diagnosis


def _log(log, line, run_dir):
    """Append Caffe's ``line`` to train.log (unbuffered: nothing is left to fail again at its closing); a full
    disk ends the run with one line, and Caffe is stopped after."""
    try:
        log.write(line.encode("utf-8", errors="replace"))
    except OSError as error:
        raise cannot_write(error, run_dir / LOG) from None


class _Curves:
    """What a reader of the run directory sees of a run going on: curves.csv rewritten at every test pass, and
    curves.png redrawn from the same records, at most every CURVES_EVERY_S seconds, by a thread of its own, so that
    drawing never holds up reading Caffe's output (and with it a diagnosis that must stop Caffe)."""

    def __init__(self, run_dir, history):
        self.run_dir, self.history, self.latest = run_dir, history, None
        self.wanted, self.closing = threading.Event(), threading.Event()
        self.drawer = threading.Thread(target=self._draw, name="curves.png", daemon=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        """Let the drawing under way end, so that none overwrites the final curves."""
        self.closing.set()
        self.wanted.set()
        if self.drawer.is_alive():
            self.drawer.join()

    def refresh(self, watcher, events):
        if not any(isinstance(event, TestResult) for event in events):
            return
        self.latest = [dict(record) for record in self.history + watcher.records]
        write_curves_csv(self.latest, self.run_dir / CURVES_CSV)
        self.wanted.set()
        if not self.drawer.is_alive():
            self.drawer.start()

    def _draw(self):
        """Redraw at most every CURVES_EVERY_S, the first time as long after the first test pass: a short run is
        drawn once, when it ends."""
        while not self.closing.wait(CURVES_EVERY_S):
            if not self.wanted.is_set():
                continue
            self.wanted.clear()
            try:
                plot_curves(self.latest, self.run_dir / CURVES_PNG)
            except CaffegenError:  # a full disk: the final curves, written as the run ends, say so
                return


def _stop_and_log(process, log):
    """Stop a Caffe that caffegen is leaving: it snapshots first, as on Ctrl-C, and what it says on the way goes
    to train.log where the disk still takes it. It is killed if it has not ended within STOP_WAIT_S."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    killer = threading.Timer(STOP_WAIT_S, process.kill)
    killer.start()
    try:
        for line in process.stdout:
            with contextlib.suppress(OSError):
                log.write(line.encode("utf-8", errors="replace"))
        process.wait()
    finally:
        killer.cancel()


def _interrupt(process, interrupts):
    interrupts.append(time.monotonic())
    if process.poll() is None:
        process.send_signal(signal.SIGINT if len(interrupts) == 1 else signal.SIGTERM)


def _show(progress, watcher, events):
    """Move the progress to Caffe's iteration, with the latest figures; a test pass is a milestone."""
    tested = [event.iteration for event in events if isinstance(event, TestResult)]
    if tested:
        progress.show(tested[-1], _figures(watcher), True, watcher.max_iter)
    elif watcher.iteration is not None:
        progress.show(watcher.iteration, _figures(watcher), False, watcher.max_iter)


def _figures(watcher):
    """The latest loss and validation accuracy, as shown beside the progress."""
    figures = {}
    loss = next((record["loss"] for record in reversed(watcher.records) if record.get("loss") is not None), None)
    if loss is not None:
        figures["loss"] = f"{loss:.4g}"
    accuracy = watcher.latest_test.get("test/accuracy")
    if accuracy is not None:
        figures["val acc"] = f"{accuracy:.3f}"
    return figures


def _finish(result, run_dir):
    """Curves, the final model, and the exit code that tells how the run ended."""
    if result.records:
        write_curves_csv(result.records, run_dir / CURVES_CSV)
        plot_curves(result.records, run_dir / CURVES_PNG)
    models = [Path(path) for path in result.watcher.snapshots if str(path).endswith(".caffemodel")]
    if models:
        result.final_model = run_dir / models[-1]
    if result.diagnosis is not None and result.diagnosis.stop:
        result.exit_code = DIAGNOSED
    elif result.caffe_exit_code < 0:
        result.exit_code = 128 - result.caffe_exit_code
    elif result.caffe_exit_code == 0 and result.interrupted:
        result.exit_code = INTERRUPTED
    write_result(run_dir, result_summary(result, run_dir))


def result_summary(result, run_dir):
    """What a finished run amounts to (a RunResult), as ``run_dir`` records it."""
    accuracies = validation_accuracies(result.records)
    best = max(accuracies, key=lambda pair: pair[1]) if accuracies else None
    return RunResult(
        exit_code=result.exit_code,
        caffe_exit_code=result.caffe_exit_code,
        diagnosis=result.diagnosis.kind if result.diagnosis else None,
        interrupted=result.interrupted,
        seconds=round(result.seconds, 3),
        iterations=result.records[-1]["iteration"] if result.records else 0,
        last_accuracy=accuracies[-1][1] if accuracies else None,
        best_accuracy=best[1] if best else None,
        best_iteration=best[0] if best else None,
        final_model=relative_record(run_dir, result.final_model) if result.final_model else None,
        caffe_version=result.caffe_version,
    )


def _resumable(run_dir):
    """The snapshot a --resume would start from, or None when none is whole."""
    try:
        return newest_snapshot(run_dir)
    except CaffegenError:
        return None


def earlier_records(run_dir, upto):
    """The records of a run's train.log before iteration ``upto``, where a resumed run takes over."""
    log = Path(run_dir) / LOG
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
        state = _resumable(run_dir) if result.watcher.snapshots else None
        where = f"; snapshot: {state}" if state else ""
        lines.append(f"interrupted at iteration {result.watcher.iteration}{where}; "
                     f"continue with: {sh_command('caffegen', 'launch', run_dir, '--resume')}")
    lines += result.notes
    log = Path(run_dir) / LOG
    logs = log if log.exists() else Path(run_dir) / "stage*" / LOG
    lines.append(f"{result.seconds:.1f} s; log: {logs}"
                 + (f"; curves: {Path(run_dir) / 'curves.png'}" if result.records else ""))
    return lines
