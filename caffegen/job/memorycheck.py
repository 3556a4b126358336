"""A job's memory against the machine's, before Caffe runs: the estimate, the budget, and a batch that fits.

``caffe train`` holds the TRAIN and the TEST net at once; a cached run's heaviest process may be the
feature extraction, one ``extract_features`` per chunk of images, whose mini-batch is chosen here:
the most images that fit. When training's estimate exceeds the budget, the fix is a smaller batch
with a larger ``iter_size``, which keeps the effective batch (and so the learning) the same, and a
smaller validation batch where even one image does not fit beside it.
"""

from dataclasses import dataclass
from pathlib import Path

from caffegen.defaults import CACHE_BATCH, GPU_CACHE_BATCH
from caffegen.errors import CaffegenError
from caffegen.io.caffemodel import read_caffemodel
from caffegen.io.prototxt import read_net, read_solver
from caffegen.job.cacheplan import LISTS
from caffegen.job.rundir import TRAIN_VAL, RunDir, is_run_dir
from caffegen.net.memory import (
    MemoryBudget,
    extraction_memory,
    format_bytes,
    largest_batch,
    training_memory,
    weights_copy,
)
from caffegen.net.netview import TEST, TRAIN

GENERIC_RETRY = ("prepare the run again with a smaller --batch-size and a larger --iter-size, which keep the "
                 "effective batch (batch × iter_size), or a smaller --val-batch-size")
NOTHING_FITS = "not even one image at a time fits: free memory, or use a machine with more"


@dataclass(frozen=True)
class MemoryCheck:
    """A process's estimated peak against the budget and, when it exceeds it, how to make it fit: as prepare
    says it (``remedy``), and as a diagnosis of the run says it (``retry``)."""

    estimate: object  # a ProcessMemory
    budget: MemoryBudget
    remedy: str = None
    retry: str = GENERIC_RETRY

    @property
    def over(self):
        """Whether the estimate exceeds a known budget."""
        return self.budget.bytes is not None and self.estimate.peak > self.budget.bytes

    def figures(self):
        """'training (…) peaks at about 9.1 GB', with the budget it is measured against when known."""
        about = "at least" if self.estimate.unknown else "about"
        words = f"{self.estimate.what} peaks at {about} {format_bytes(self.estimate.peak)}"
        if self.budget.bytes is None:
            return words
        relation = "more than" if self.over else "within"
        return f"{words}, {relation} the {format_bytes(self.budget.bytes)} of {self.budget.source}"

    def note(self, force=False, path=None):
        """The line that tells the user; over the budget, a one-line refusal unless ``force``."""
        if self.over and not force:
            raise CaffegenError(f"{self.figures()}, and Caffe would be killed; {self.remedy}, or --force to "
                                "prepare it anyway", path)
        if self.over:
            return f"memory: {self.figures()}: Caffe may be killed; prepared anyway (--force)"
        if self.estimate.unknown:
            names = ", ".join(f"'{name}'" for name in self.estimate.unknown[:3])
            return f"memory: unverified: {self.figures()}, leaving out layer(s) {names}, whose size is unknown"
        if self.budget.bytes is None:
            return f"memory: {self.figures()}; unverified: {self.budget.source}"
        return f"memory: {self.figures()}"

    def advice(self):
        """What an out-of-memory diagnosis says of the estimate, and the fix."""
        return f"caffegen estimated that {self.figures()}; {self.retry if self.over else GENERIC_RETRY}."


def training_check(net, solver_type, input_shape, weights, device, iter_size, budget, path=None):
    """The MemoryCheck of ``caffe train`` on ``net`` (``weights``: the caffemodel to load, or None)."""
    copy = weights_copy(read_caffemodel(weights)) if weights is not None else None

    def estimate(batches=None):
        return training_memory(net, solver_type, batches, input_shape, copy, not device.is_cpu, path)

    memory = estimate()
    check = MemoryCheck(memory, budget)
    if not check.over:
        return check
    batches = {found.phase: found.batch for found in memory.nets}
    fix = _training_fix(estimate, batches, iter_size, device.workers, budget.bytes)
    if fix is None:
        return MemoryCheck(memory, budget, NOTHING_FITS, NOTHING_FITS)
    return MemoryCheck(memory, budget, f"pass {fix}", f"prepare the run again with {fix}")


def _training_fix(estimate, batches, iter_size, workers, budget):
    """The options that fit ``budget`` with the same effective batch, in words; None when none does."""
    train, test = batches[TRAIN], batches.get(TEST)
    most = largest_batch(lambda batch: estimate({TRAIN: batch, TEST: test}).peak, budget, train)
    if most is None and test:
        test = largest_batch(lambda batch: estimate({TRAIN: 1, TEST: batch}).peak, budget, test)
        if test is not None:
            most = largest_batch(lambda batch: estimate({TRAIN: batch, TEST: test}).peak, budget, train)
    if most is None:
        return None
    accumulated = train * iter_size  # per solver; every GPU runs one
    steps = next(steps for steps in range(1, accumulated + 1)
                 if accumulated % steps == 0 and accumulated // steps <= most)
    smaller = estimate({TRAIN: accumulated // steps, TEST: test}).peak
    val = f" --val-batch-size {test}" if test != batches.get(TEST) else ""
    return (f"--batch-size {accumulated // steps} --iter-size {steps}{val} to keep the effective batch of "
            f"{accumulated * workers} (about {format_bytes(smaller)})")


@dataclass(frozen=True)
class ExtractionBatch:
    """The mini-batch of a feature extraction and why it is that size, in words."""

    size: int
    why: str

    def line(self):
        return f"feature extraction in mini-batches of {self.size} images ({self.why})"


def extraction_batch(plan, device, budget):
    """The ExtractionBatch of ``plan`` (a CachePlan): its ``--cache-batch`` when given, else the largest
    batch up to :data:`CACHE_BATCH` (on a GPU :data:`GPU_CACHE_BATCH`) whose estimate fits ``budget``.

    Past those sizes an extraction runs no faster: Caffe's CPU convolutions loop over the images of a
    batch, so a larger one only grows the blobs, and a GPU is already busy at the larger one.
    """
    if plan.cache_batch is not None:
        return ExtractionBatch(plan.cache_batch, "--cache-batch")
    most = CACHE_BATCH if device.is_cpu else GPU_CACHE_BATCH
    if budget.bytes is None:
        return ExtractionBatch(most, f"the default; unverified against memory: {budget.source}")
    fits = [largest_batch(lambda size, estimate=estimate: estimate(size).peak, budget.bytes, most)
            for estimate in _extraction_estimates(plan, device).values()]
    if None in fits:
        return ExtractionBatch(1, f"not even one image fits the {format_bytes(budget.bytes)} of {budget.source}")
    size = min(fits)
    if size == most:
        return ExtractionBatch(size, "the default, within memory")
    return ExtractionBatch(size, f"the most that fit the {format_bytes(budget.bytes)} of {budget.source}")


def extraction_check(plan, device, budget, batch):
    """The MemoryCheck of the heaviest ``extract_features`` process that extracts ``plan``'s features (a CachePlan)
    in mini-batches of ``batch`` images."""
    checks = []
    for phase, estimate in _extraction_estimates(plan, device).items():
        memory = estimate(max(1, min(plan.images[LISTS[phase]], batch)))
        check = MemoryCheck(memory, budget)
        if check.over:
            most = largest_batch(lambda size, estimate=estimate: estimate(size).peak, budget.bytes, batch)
            fits = f"pass --cache-batch {most}, " if most else "not even one image at a time fits: "
            check = MemoryCheck(memory, budget, f"{fits}train without --cache-features, or free memory")
        checks.append(check)
    return max(checks, key=lambda check: check.estimate.peak)


def _extraction_estimates(plan, device):
    """{phase: a function of the batch size giving the ProcessMemory of the extraction of that phase's trunk}."""
    def estimate(phase):
        layers = [plan.views[phase].layer(name) for name in plan.extracted[phase]]
        return lambda size: extraction_memory(layers, (plan.boundary, plan.label), size, plan.input_shape,
                                              not device.is_cpu)
    return {phase: estimate(phase) for phase in LISTS}


def cached_extraction(net_path, budget):
    """(ProcessMemory, ExtractionBatch) of the feature extraction when ``net_path`` is a prepared cached run's
    train_val.prototxt, at the mini-batch it would run with under ``budget``; None for any other net."""
    run_dir = Path(net_path).parent
    if Path(net_path).name != TRAIN_VAL or not is_run_dir(run_dir):
        return None
    run = RunDir(run_dir)
    if not run.caches_features:
        return None
    plan = run.cache_plan
    batch = extraction_batch(plan, run.device, budget)
    return extraction_check(plan, run.device, budget, batch.size).estimate, batch


def run_check(run, budget, device):
    """The MemoryCheck of training the prepared :class:`RunDir` ``run`` on ``device``."""
    solver = read_solver(run.solver)
    net = read_net(run.train_val).net
    return training_check(net, solver.type, list(run.input_shape), run.weights(), device, solver.iter_size, budget,
                          run.train_val)
