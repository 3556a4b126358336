"""Launching a prepared run: the real ``caffe train``, watched line by line.

Caffe's output goes to ``train.log``; a progress bar shows iteration, loss and the latest
validation accuracy; ``curves.csv`` and ``curves.png`` are written as the run ends. A diagnosed
failure (a loss gone to NaN, a weights shape mismatch, …) stops the run early with the fix in
plain words. Ctrl-C asks Caffe to snapshot and stop, so the run can continue with ``--resume``.
"""

import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from .caffelog import LogWatcher
from .curves import plot_curves, write_curves_csv
from .diagnose import Diagnosis
from .errors import CaffegenError
from .job import MANIFEST, SNAPSHOT_DIR
from .layers import num_output_param
from .head import find_classifiers
from .inspect import preflight
from .locate import caffe_is_cpu_only, find_caffe
from .prototxt import read_net, read_solver, to_text, write_atomic
from .scripts import caffe_arguments

RESULT = "result.json"
INTERRUPTED = 130
DIAGNOSED = 3
SNAPSHOT_NAME = re.compile(r"_iter_(\d+)\.solverstate$")


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


def load_manifest(run_dir):
    """The manifest of a run directory written by ``caffegen prepare``."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        raise CaffegenError(f"not a caffegen run directory (no {MANIFEST}); create one with caffegen prepare", run_dir)
    return json.loads(path.read_text(encoding="utf-8"))


def launch(run_dir, caffe=None, gpu=None, resume=False, echo=None, show_progress=None):
    """Run ``caffe train`` for the run directory and watch it; see :class:`LaunchResult`."""
    run_dir = Path(run_dir).resolve()
    echo = echo or (lambda line: None)
    manifest = load_manifest(run_dir)
    if "stages" in manifest:
        return launch_stages(run_dir, manifest, caffe, gpu, resume, echo, show_progress)
    caffe = find_caffe(caffe)
    device = choose_launch_device(manifest["device"], gpu, caffe, echo)
    match_solver_mode(run_dir, device, echo)
    check_labels(run_dir)
    arguments = _arguments(run_dir, manifest, device, resume, echo)
    history = earlier_records(run_dir, _iteration_of(arguments)) if resume else []
    return _run(caffe, arguments, run_dir, history, echo, show_progress)


def launch_stages(run_dir, manifest, caffe, gpu, resume, echo, show_progress):
    """Run the stages of a staged job in order, each from the final weights of the one before.

    With ``resume``, finished stages are skipped and the first unfinished one resumes from its
    newest snapshot (or starts over when it has none). The stages' curves are joined, with the
    stage boundaries marked.
    """
    results, offsets, offset = [], [], 0
    for number, stage in enumerate(manifest["stages"], start=1):
        stage_dir = run_dir / stage["dir"]
        offsets.append(offset)
        offset += stage["max_iter"]
        finished = _finished(stage_dir)
        if resume and finished:
            results.append(finished)
            continue
        echo(f"stage {number}/{len(manifest['stages'])}: {_stage_words(stage)}")
        resumable = resume and any((stage_dir / SNAPSHOT_DIR).glob("*.solverstate"))
        result = launch(stage_dir, caffe, gpu, resumable, echo, show_progress)
        results.append(result)
        if result.exit_code != 0:
            break
    return _joined(run_dir, results, offsets)


def _finished(stage_dir):
    """The result of a stage that ran to its end, rebuilt from its files, or None."""
    path = stage_dir / RESULT
    if not path.is_file() or json.loads(path.read_text(encoding="utf-8"))["exit_code"] != 0:
        return None
    summary = json.loads(path.read_text(encoding="utf-8"))
    records = earlier_records(stage_dir, summary["iterations"] + 1)
    final = Path(summary["final_model"]) if summary["final_model"] else None
    return LaunchResult(0, 0, LogWatcher(), records, seconds=summary["seconds"], final_model=final)


def _stage_words(stage):
    freeze = stage["freeze"]
    point = (f"frozen up to {freeze['upto']}" if freeze["upto"] else
             f"trained from {freeze['from']}" if freeze["from"] else "nothing frozen")
    return f"{point}, base_lr {stage['base_lr']:g}, {stage['epochs']} epochs"


def _joined(run_dir, results, offsets):
    """One result for the whole staged run: records on one iteration axis, the last stage's outcome."""
    records = [dict(record, iteration=record["iteration"] + offset)
               for result, offset in zip(results, offsets) for record in result.records]
    last = results[-1]
    joined = LaunchResult(last.exit_code, last.caffe_exit_code, last.watcher, records, last.diagnosis,
                          last.interrupted, sum(result.seconds for result in results), last.final_model)
    if records:
        write_curves_csv(records, run_dir / "curves.csv")
        plot_curves(records, run_dir / "curves.png", stage_boundaries=offsets[1:len(results)])
    write_atomic(run_dir / RESULT, json.dumps(result_summary(joined), indent=2) + "\n")
    return joined


def choose_launch_device(planned, gpu, caffe, echo):
    """--gpu as given, else the prepared device; a CPU-only Caffe never gets -gpu."""
    wanted = (gpu or planned).lower()
    if wanted != "cpu" and caffe_is_cpu_only(caffe):
        if gpu:
            raise CaffegenError(f"{caffe} is a CPU-only build and cannot use --gpu {gpu}; "
                                "drop --gpu to train on the CPU")
        echo(f"{caffe} is a CPU-only build: training on the CPU instead of GPU {planned}")
        return "cpu"
    return wanted


def match_solver_mode(run_dir, device, echo):
    """Make solver_mode agree with the device: Caffe takes GPU mode from the solver when -gpu is absent."""
    path = run_dir / "solver.prototxt"
    solver = read_solver(path)
    mode = solver.CPU if device == "cpu" else solver.GPU
    if solver.solver_mode != mode:
        solver.solver_mode = mode
        write_atomic(path, to_text(solver))
        echo(f"set solver_mode to {'CPU' if device == 'cpu' else 'GPU'} in {path.name}")


def check_labels(run_dir):
    """Refuse lists with labels the classifier cannot score: Caffe's release builds do not check them."""
    net = read_net(run_dir / "train_val.prototxt").net
    outputs = [num_output_param(layer).num_output for name in find_classifiers(net)
               for layer in net.layer if layer.name == name]
    if not outputs:
        return
    for path in (run_dir / "train.txt", run_dir / "val.txt"):
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            label = line.rpartition(" ")[2]
            if line.strip() and (not label.isdigit() or int(label) >= min(outputs)):
                raise CaffegenError(f"label '{label}' is not in 0…{min(outputs) - 1}, but the classifier has "
                                    f"{min(outputs)} outputs: Caffe would train on garbage (its release builds "
                                    "do not check labels); fix the list or retarget with caffegen head", path, number)


def newest_snapshot(run_dir):
    """The solver state with the highest iteration in the run's snapshot folder."""
    states = [(int(match.group(1)), path) for path in (Path(run_dir) / SNAPSHOT_DIR).glob("*.solverstate")
              if (match := SNAPSHOT_NAME.search(path.name))]
    if not states:
        raise CaffegenError(f"nothing to resume: no .solverstate in {SNAPSHOT_DIR}/", run_dir)
    return max(states)[1]


def preflight_weights(run_dir, weights, echo):
    """Check the weights against the run's net before Caffe spends minutes loading them."""
    deploy = read_net(run_dir / "deploy.prototxt").net
    input_shape = list(deploy.layer[0].input_param.shape[0].dim) if deploy.layer[0].type == "Input" else None
    for warning in preflight(read_net(run_dir / "train_val.prototxt").net, weights, input_shape):
        echo(warning)


def _arguments(run_dir, manifest, device, resume, echo):
    gpu = None if device == "cpu" else device
    if resume:
        snapshot = newest_snapshot(run_dir).relative_to(run_dir)
        arguments = caffe_arguments(snapshot=snapshot, gpu=gpu)
    else:
        weights = run_dir / manifest["weights"]
        if not weights.is_file():
            raise CaffegenError("the pretrained weights named in the manifest are missing", weights)
        preflight_weights(run_dir, weights, echo)
        arguments = caffe_arguments(weights=weights, gpu=gpu)
    return arguments + ["-sigint_effect", "stop"]


def _iteration_of(arguments):
    """The iteration the -snapshot argument resumes from."""
    snapshot = arguments[arguments.index("-snapshot") + 1]
    return int(SNAPSHOT_NAME.search(str(snapshot)).group(1))


def earlier_records(run_dir, upto):
    """The records of train.log before iteration ``upto``, where a resumed run takes over."""
    log = run_dir / "train.log"
    if not log.is_file():
        return []
    watcher = LogWatcher()
    with log.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            watcher.feed(line)
    watcher.close()
    return [record for record in watcher.records if record["iteration"] < upto]


def _run(caffe, arguments, run_dir, history, echo, show_progress):
    started = time.monotonic()
    watcher = LogWatcher()
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
    finally:
        signal.signal(signal.SIGINT, previous)
    result = LaunchResult(code, code, watcher, history + watcher.records, diagnosis, bool(interrupts),
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
    write_atomic(run_dir / RESULT, json.dumps(result_summary(result), indent=2) + "\n")


def result_summary(result):
    """What a finished run amounts to, as stored in result.json: for people, sweeps and later stages."""
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
        "final_model": str(result.final_model) if result.final_model else None,
    }


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
                     f"continue with: caffegen launch {run_dir} --resume")
    log = Path(run_dir) / "train.log"
    logs = log if log.exists() else Path(run_dir) / "stage*" / "train.log"
    lines.append(f"{result.seconds:.1f} s; log: {logs}"
                 + (f"; curves: {Path(run_dir) / 'curves.png'}" if result.records else ""))
    return lines
