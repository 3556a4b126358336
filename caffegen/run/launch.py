"""Launching a prepared run, a staged one, or a cached one with the real Caffe.

Before Caffe starts: the device (a CPU-only Caffe never gets -gpu), solver_mode, the labels of
the lists, and the weights against the net. Then :mod:`caffegen.run.runner` runs and watches
``caffe train``; ``--resume`` continues from the newest snapshot, with the curves continuing too.
"""

import json
from pathlib import Path

from caffegen.run.cache import run_cached
from caffegen.run.caffelog import LogWatcher
from caffegen.run.curves import plot_curves, write_curves_csv
from caffegen.errors import CaffegenError
from caffegen.net.inspect import preflight
from caffegen.run.locate import find_caffe
from caffegen.io.prototxt import read_net, write_atomic
from caffegen.job.rundir import (SNAPSHOT_DIR, SNAPSHOT_NAME, check_labels, choose_launch_device, earlier_records,
                     load_manifest, match_solver_mode, newest_snapshot)
from caffegen.run.runner import RESULT, LaunchResult, result_summary, run_caffe_train
from caffegen.job.scripts import caffe_arguments


def launch(run_dir, caffe=None, gpu=None, resume=False, echo=None, show_progress=None):
    """Run ``caffe train`` for the run directory and watch it; see :class:`LaunchResult`."""
    run_dir = Path(run_dir).resolve()
    echo = echo or (lambda line: None)
    manifest = load_manifest(run_dir)
    if "stages" in manifest:
        return launch_stages(run_dir, manifest, caffe, gpu, resume, echo, show_progress)
    if manifest.get("cache_features"):
        if resume:
            raise CaffegenError("a run with cached features does not resume; launch it again: the cached "
                                "features are reused, only the head trains again", run_dir)
        return run_cached(run_dir, caffe, echo, show_progress, gpu)
    caffe = find_caffe(caffe)
    device = choose_launch_device(manifest["device"], gpu, caffe, echo)
    match_solver_mode(run_dir, device, echo)
    check_labels(run_dir)
    arguments = _arguments(run_dir, manifest, device, resume, echo)
    history = earlier_records(run_dir, _iteration_of(arguments)) if resume else []
    return run_caffe_train(caffe, arguments, run_dir, history, echo, show_progress)


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
    summary = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    if summary is None or summary["exit_code"] != 0:
        return None
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
