"""What trackers record about a run beside its curves: its parameters from the manifest, and once it ended its
final metrics (result.json and the evaluation's metrics.json) and its files (curves, report, confusion matrix)."""

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from caffegen.errors import CaffegenError
from caffegen.job.rundir import CURVES_PNG, EVAL_DIR
from caffegen.run.report import CONFUSION_CSV, CONFUSION_PNG, METRICS, REPORT

ARTIFACTS = (CURVES_PNG, f"{EVAL_DIR}/{REPORT}", f"{EVAL_DIR}/{CONFUSION_PNG}", f"{EVAL_DIR}/{CONFUSION_CSV}",
             f"{EVAL_DIR}/{METRICS}")
RESULT_METRICS = ("best_accuracy", "last_accuracy", "best_iteration", "iterations", "seconds", "exit_code")


@dataclass(frozen=True)
class Outcome:
    """How a run ended, for trackers: ``metrics`` {name: number}, ``artifacts`` (existing files), ``step`` (its last
    iteration), ``failed``, and ``params`` known only once it ran (the Caffe version)."""

    metrics: dict
    artifacts: tuple
    step: int
    failed: bool
    params: dict = field(default_factory=dict)

    def fingerprint(self):
        """What tells one outcome from another: a run evaluated again, or relaunched, is recorded again."""
        files = [(str(path), path.stat().st_mtime) for path in self.artifacts]
        return json.dumps([sorted(self.metrics.items()), files, sorted(self.params.items())], default=str)


def run_params(run):
    """{name: value} of the :class:`RunDir` ``run``'s manifest and solver, as trackers record parameters."""
    manifest = run.manifest
    freeze = manifest.freeze
    params = {"base_model": _base_model(manifest.inputs or {}), "strategy": _strategy(run),
              "freeze": f"upto {freeze.upto}" if freeze and freeze.upto else
              f"from {freeze.start}" if freeze and freeze.start else "none",
              "classes": len(manifest.classes), "class_names": ",".join(manifest.classes)[:500],
              "train_images": manifest.images.train, "val_images": manifest.images.val,
              "max_iter": manifest.schedule.max_iter, "epochs": manifest.schedule.epochs,
              "base_lr": manifest.base_lr, "device": manifest.device, "task": manifest.task,
              "caffegen": manifest.caffegen}
    if manifest.cache_features:
        params["engine"] = manifest.features_engine or manifest.engine
    params.update(_solver_params(run.stages[0] if run.stages else run))
    return {name: value for name, value in params.items() if value is not None}


def _base_model(inputs):
    model = inputs.get("model")
    if isinstance(model, dict) and model.get("name"):
        return model["name"]
    weights = inputs.get("weights") or {}
    return Path(weights["path"]).name if weights.get("path") else None


def _strategy(run):
    if run.stages:
        return f"staged ({len(run.stages)} stages)"
    return "cached features" if run.caches_features else "fine-tuning"


def _solver_params(run):
    """The training batch, iter_size and learning-rate policy of a run's solver and net; none where unreadable."""
    from caffegen.io.prototxt import read_net, read_solver
    from caffegen.net.wiring import phase_batch_sizes
    try:
        solver = read_solver(run.solver)
        no_override = SimpleNamespace(batch_size=None, val_batch_size=None)  # the net's own batches, as prepared
        batches = phase_batch_sizes(read_net(run.train_val).net, no_override)
    except CaffegenError:
        return {}
    return {"batch": batches["TRAIN"], "iter_size": solver.iter_size, "lr_policy": solver.lr_policy,
            "solver_type": solver.type or "SGD"}


def run_outcome(run):
    """The :class:`Outcome` of the :class:`RunDir` ``run``, or None while it has not ended."""
    result = run.result()
    if result is None:
        return None
    metrics = {f"final/{name}": getattr(result, name) for name in RESULT_METRICS if getattr(result, name) is not None}
    evaluated = run.path / EVAL_DIR / METRICS
    if evaluated.is_file():
        metrics.update(_numbers(json.loads(evaluated.read_text(encoding="utf-8")), "eval"))
    artifacts = tuple(run.path / name for name in ARTIFACTS if (run.path / name).is_file())
    params = {"caffe_version": result.caffe_version} if result.caffe_version else {}
    return Outcome(metrics, artifacts, result.iterations, result.exit_code != 0, params)


def _numbers(record, prefix):
    """The numbers of a JSON ``record`` (nested ones, and per-class lists, too) as {prefix/key: value}."""
    numbers = {}
    for key, value in record.items():
        if isinstance(value, dict):
            numbers.update(_numbers(value, f"{prefix}/{key}"))
        elif isinstance(value, list) and all(isinstance(item, dict) and "class" in item for item in value):
            for item in value:  # per_class: one entry a class
                numbers.update(_numbers(item, f"{prefix}/{key}/{item['class']}"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            numbers[f"{prefix}/{key}"] = value
    return numbers
