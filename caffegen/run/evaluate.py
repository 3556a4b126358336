"""Evaluating a trained classifier or segmentation net with real Caffe: predictions over labelled images and metrics.

Caffe computes the probabilities, or another engine once it agreed with Caffe on the first mini-batch
(:mod:`caffegen.run.engines.probabilities`); scikit-learn the metrics. The
mean class accuracy is the mean of the per-class recalls, so a large class cannot hide a bad one.
A segmentation is scored over pixels (those labelled 255 left out): pixel accuracy, and the
intersection over union of each class, whose mean over the classes present is the mean IoU.
"""

import warnings
from dataclasses import dataclass

import numpy as np

from caffegen.defaults import FORWARD_BATCH, IGNORE_LABEL
from caffegen.errors import CaffegenError
from caffegen.job.dataset import labelled_images
from caffegen.job.model import load_model
from caffegen.job.options import CAFFE, CLASSIFICATION, SEGMENTATION
from caffegen.job.rundir import CURVES_PNG, EVAL_DIR
from caffegen.job.segmentation import checked_mask, pair_images, read_pairs
from caffegen.reporting import SilentReporter
from caffegen.run.engines.probabilities import model_probabilities
from caffegen.run.report import write_evaluation

TOP_K = 5


@dataclass
class Evaluation:
    """Images, their true labels, the model's probabilities for them, and what follows from those."""

    classes: list
    paths: list
    labels: np.ndarray  # (N,) true labels
    probabilities: np.ndarray  # (N, K)
    engine_run: object = None  # the EngineRun that computed the probabilities
    task = CLASSIFICATION

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
        from sklearn.metrics import confusion_matrix  # scikit-learn costs every command a second and more at start
        return confusion_matrix(self.labels, self.predicted, labels=range(len(self.classes)))

    def metrics(self):
        """top-1, top-5 (with more than 5 classes), mean class accuracy and per-class precision/recall/F1/support."""
        from sklearn.metrics import (
            accuracy_score,
            balanced_accuracy_score,
            precision_recall_fscore_support,
            top_k_accuracy_score,
        )
        labels = range(len(self.classes))
        precision, recall, f1, support = precision_recall_fscore_support(
            self.labels, self.predicted, labels=labels, zero_division=0)
        with warnings.catch_warnings():  # classes absent from the images are expected, not worth a warning
            warnings.simplefilter("ignore", UserWarning)
            mean_class_accuracy = float(balanced_accuracy_score(self.labels, self.predicted))
        top1 = float(accuracy_score(self.labels, self.predicted))
        metrics = {"task": self.task, "images": len(self.paths), "top1": top1,
                   "mean_class_accuracy": mean_class_accuracy}
        if len(self.classes) > TOP_K:  # with K ≤ 5 classes every label is in the top 5
            metrics["top5"] = float(top_k_accuracy_score(self.labels, self.probabilities, k=TOP_K, labels=labels))
        metrics["per_class"] = [
            {"class": name, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(self.classes, precision, recall, f1, support)]
        return dict(metrics, **self.engine_run.record()) if self.engine_run else metrics

    def mistakes(self, count):
        """Indices of the ``count`` most confident wrong predictions, most confident first."""
        wrong = np.flatnonzero(self.predicted != self.labels)
        return wrong[np.argsort(-self.confidence[wrong], kind="stable")][:count]


@dataclass
class SegmentationEvaluation:
    """Images, their true masks, the model's per-pixel probabilities, and what follows from those, over pixels."""

    classes: list
    paths: list
    mask_paths: list
    masks: np.ndarray  # (N, H, W) true classes, IGNORE_LABEL where ignored
    probabilities: np.ndarray  # (N, K, H, W)
    engine_run: object = None  # the EngineRun that computed the probabilities
    task = SEGMENTATION

    @property
    def predicted(self):
        """(N, H, W) most probable class of each pixel."""
        return self.probabilities.argmax(axis=1)

    def confusion(self, index=None):
        """(K, K) pixel counts, of all images or image ``index``: rows the true class, columns the predicted one."""
        masks, predicted = (self.masks, self.predicted) if index is None else (self.masks[index], self.predicted[index])
        scored = masks != IGNORE_LABEL
        from sklearn.metrics import confusion_matrix
        return confusion_matrix(masks[scored], predicted[scored], labels=range(len(self.classes)))

    def metrics(self):
        """Pixel accuracy, mean IoU over the classes present, and per-class IoU and pixel counts."""
        counts = self.confusion()
        ious = intersection_over_union(counts)
        computed = self.engine_run.record() if self.engine_run else {}
        return computed | {"task": self.task, "images": len(self.paths), "pixels": int(counts.sum()),
                "pixel_accuracy": float(np.trace(counts) / max(counts.sum(), 1)),
                "mean_iou": float(np.nanmean(ious)) if not np.isnan(ious).all() else 0.0,
                "per_class": [{"class": name, "iou": None if np.isnan(iou) else float(iou),
                               "support": int(true), "predicted": int(predicted)}
                              for name, iou, true, predicted in zip(self.classes, ious, counts.sum(axis=1),
                                                                    counts.sum(axis=0))]}

    def image_scores(self):
        """(N,) mean IoU of each image over the classes present in it or its prediction."""
        return np.array([np.nan_to_num(np.nanmean(intersection_over_union(self.confusion(index))), nan=1.0)
                         for index in range(len(self.paths))])

    def worst(self, count):
        """Indices of the ``count`` images of lowest mean IoU, worst first."""
        return np.argsort(self.image_scores(), kind="stable")[:count]


def intersection_over_union(counts):
    """(K,) IoU of each class from a (K, K) confusion matrix; NaN for a class neither true nor predicted."""
    union = counts.sum(axis=0) + counts.sum(axis=1) - np.diag(counts)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, np.diag(counts) / union, np.nan)


def evaluation_images(model, data=None, list_file=None, skip_bad=False, warn=None):
    """What to evaluate ``model`` on: [(image, label)], or [(image, mask)] for a segmentation; the run's val set by
    default."""
    return EVALUATIONS[model.task].images(model, data, list_file, skip_bad, warn)


def _labelled_images(model, data, list_file, skip_bad, warn):
    """[(image, label)] of ``data`` or ``list_file``, or of the run's validation list."""
    return labelled_images(model.classes, data, list_file, model.run and model.run.path, skip_bad, warn)


def _image_mask_pairs(model, data, list_file, skip_bad, warn):
    """[(image, mask)] of ``data`` (images/ and masks/), or of the run's validation pairs."""
    if list_file:
        raise CaffegenError("--list names class labels; evaluate a segmentation on --data DIR (images/ and masks/)")
    return pair_images(data) if data else read_pairs(model.run.path)


def evaluate(target, model, images, batch_size=FORWARD_BATCH, device=None, reporter=None, engine=CAFFE):
    """The evaluation of ``model`` (a TrainedModel) on ``images``, [(path, label or mask)], computed by ``engine``."""
    return EVALUATIONS[model.task].evaluate(target, model, images, batch_size, device, reporter, engine)


def evaluate_classifier(target, model, images, batch_size=FORWARD_BATCH, device=None, reporter=None, engine=CAFFE):
    """The Evaluation of the classifier ``model`` on ``images``, [(path, label)], computed by ``engine``."""
    paths = [path for path, _ in images]
    probabilities, run = model_probabilities(target, model, paths, engine, batch_size, device, reporter)
    if probabilities.shape[1] != len(model.classes):
        raise CaffegenError(f"the model outputs {probabilities.shape[1]} values per image but labels.txt names "
                            f"{len(model.classes)} classes", model.deploy)
    return Evaluation(model.classes, paths, np.array([label for _, label in images]), probabilities, run)


def segment(target, model, paths, batch_size=FORWARD_BATCH, device=None, reporter=None, engine=CAFFE):
    """((N, K, H, W) per-pixel probabilities of the segmentation ``model`` over the image files ``paths``, the
    EngineRun that computed them)."""
    flat, run = model_probabilities(target, model, paths, engine, batch_size, device, reporter)
    height, width = model.input_shape[2:]
    if flat.shape[1] != len(model.classes) * height * width:
        raise CaffegenError(f"the model outputs {flat.shape[1]} values per image, not {len(model.classes)} classes × "
                            f"{height}×{width} pixels", model.deploy)
    return flat.reshape(len(paths), len(model.classes), height, width), run


def evaluate_segmentation(target, model, pairs, batch_size=FORWARD_BATCH, device=None, reporter=None, engine=CAFFE):
    """The SegmentationEvaluation of ``model`` on ``pairs`` [(image, mask)], computed by ``engine``."""
    hint = f"the model segments {len(model.classes)} classes"
    masks = np.stack([checked_mask(mask, model.input_shape[2:], len(model.classes), hint) for _, mask in pairs])
    probabilities, run = segment(target, model, [image for image, _ in pairs], batch_size, device, reporter, engine)
    return SegmentationEvaluation(model.classes, [image for image, _ in pairs], [mask for _, mask in pairs], masks,
                                  probabilities, run)


def evaluate_to(target, model, images, out_dir, batch_size=FORWARD_BATCH, device=None, reporter=None, engine=CAFFE):
    """Evaluate ``model`` on ``images`` with ``engine`` and write the evaluation's files into ``out_dir``; return its
    metrics."""
    evaluation = evaluate(target, model, images, batch_size, device, reporter, engine)
    curves = model.source / CURVES_PNG if model.run else None
    return write_evaluation(evaluation, out_dir, model, curves)


def evaluate_validation(target, run, device=None, reporter=None):
    """Evaluate a trained run (a path or RunDir) on its validation images into its eval/ (replaced); return the
    metrics."""
    model = load_model(run)
    images = evaluation_images(model)
    device = device or target.launch_device(model.run.device, reporter or SilentReporter())
    return evaluate_to(target, model, images, model.source / EVAL_DIR, device=device, reporter=reporter)


def metrics_line(metrics):
    """The headline figures of an evaluation, in one line."""
    return EVALUATIONS.get(metrics.get("task"), EVALUATIONS[CLASSIFICATION]).headline(metrics)


def _classification_line(metrics):
    top5 = f", top-5 {metrics['top5']:.4f}" if "top5" in metrics else ""
    return (f"top-1 {metrics['top1']:.4f}{top5}, mean class accuracy {metrics['mean_class_accuracy']:.4f} "
            f"on {metrics['images']} images")


def _segmentation_line(metrics):
    return (f"pixel accuracy {metrics['pixel_accuracy']:.4f}, mean IoU {metrics['mean_iou']:.4f} "
            f"on {metrics['images']} images")


@dataclass(frozen=True)
class TaskEvaluation:
    """How a task is evaluated: the images it is scored on, their evaluation by Caffe, and its headline."""

    images: object  # (model, data, list_file, skip_bad, warn) -> [(image, label or mask)]
    evaluate: object  # (target, model, images, batch_size, device, reporter, engine) -> an evaluation
    headline: object  # (metrics) -> one line


EVALUATIONS = {
    CLASSIFICATION: TaskEvaluation(_labelled_images, evaluate_classifier, _classification_line),
    SEGMENTATION: TaskEvaluation(_image_mask_pairs, evaluate_segmentation, _segmentation_line),
}
