"""Evaluating a trained classifier with real Caffe: predictions over labelled images and their metrics.

Caffe computes the probabilities (:mod:`caffegen.run.forward`); scikit-learn the metrics. The
mean class accuracy is the mean of the per-class recalls, so a large class cannot hide a bad one.
"""

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from caffegen.errors import CaffegenError
from caffegen.job.dataset import labelled_images
from caffegen.job.model import load_model
from caffegen.job.rundir import EVAL_DIR
from caffegen.run.forward import DEFAULT_BATCH, forward_images
from caffegen.run.report import write_evaluation

TOP_K = 5


@dataclass
class Evaluation:
    """Images, their true labels, the model's probabilities for them, and what follows from those."""

    classes: list
    paths: list
    labels: np.ndarray  # (N,) true labels
    probabilities: np.ndarray  # (N, K)

    @property
    def predicted(self):
        return self.probabilities.argmax(axis=1)

    @property
    def confidence(self):
        return self.probabilities.max(axis=1)

    def ranked(self, k):
        """(N, k) labels in order of falling probability."""
        return np.argsort(-self.probabilities, axis=1, kind="stable")[:, :k]

    def confusion(self):
        """(K, K) counts: rows the true class, columns the predicted one."""
        return confusion_matrix(self.labels, self.predicted, labels=range(len(self.classes)))

    def metrics(self):
        """top-1, top-5 (with more than 5 classes), mean class accuracy and per-class precision/recall/F1/support."""
        labels = range(len(self.classes))
        precision, recall, f1, support = precision_recall_fscore_support(
            self.labels, self.predicted, labels=labels, zero_division=0)
        with warnings.catch_warnings():  # classes absent from the images are expected, not worth a warning
            warnings.simplefilter("ignore", UserWarning)
            mean_class_accuracy = float(balanced_accuracy_score(self.labels, self.predicted))
        metrics = {"images": len(self.paths), "top1": float(accuracy_score(self.labels, self.predicted)),
                   "mean_class_accuracy": mean_class_accuracy}
        if len(self.classes) > TOP_K:  # with K ≤ 5 classes every label is in the top 5
            metrics["top5"] = float(top_k_accuracy_score(self.labels, self.probabilities, k=TOP_K, labels=labels))
        metrics["per_class"] = [
            {"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(self.classes, precision, recall, f1, support)]
        return metrics

    def mistakes(self, count):
        """Indices of the ``count`` most confident wrong predictions, most confident first."""
        wrong = np.flatnonzero(self.predicted != self.labels)
        return wrong[np.argsort(-self.confidence[wrong], kind="stable")][:count]


def evaluate(target, model, images, batch_size=DEFAULT_BATCH, device=None, echo=None):
    """The Evaluation of ``model`` (a TrainedModel) on ``images``, [(path, label)], computed by real Caffe."""
    blob = model.output_blob
    paths = [path for path, _ in images]
    probabilities = forward_images(target, model, paths, [blob], batch_size, device, echo)[blob]
    if probabilities.shape[1] != len(model.classes):
        raise CaffegenError(f"the model outputs {probabilities.shape[1]} values per image but labels.txt names "
                            f"{len(model.classes)} classes", model.deploy)
    return Evaluation(model.classes, paths, np.array([label for _, label in images]), probabilities)


def evaluate_to(target, model, images, out_dir, batch_size=DEFAULT_BATCH, device=None, echo=None):
    """Evaluate ``model`` on ``images`` and write the evaluation's files into ``out_dir``; return its metrics."""
    evaluation = evaluate(target, model, images, batch_size, device, echo)
    curves = model.source / "curves.png" if model.run else None
    return write_evaluation(evaluation, out_dir, model, curves)


def evaluate_validation(target, run, device=None, echo=None):
    """Evaluate a trained run (a path or RunDir) on its validation images into its eval/ (replaced); return the metrics."""
    model = load_model(run)
    images = labelled_images(model.classes, base=model.run.path)
    device = device or target.launch_device(model.run.device, echo or (lambda line: None))
    return evaluate_to(target, model, images, model.source / EVAL_DIR, device=device, echo=echo)


def metrics_line(metrics):
    """The headline figures of an evaluation, in one line."""
    top5 = f", top-5 {metrics['top5']:.4f}" if "top5" in metrics else ""
    return (f"top-1 {metrics['top1']:.4f}{top5}, mean class accuracy {metrics['mean_class_accuracy']:.4f} "
            f"on {metrics['images']} images")
