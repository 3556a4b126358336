"""Preparing a fine-tuning job: a self-contained run directory that ``caffe train`` can run.

The directory holds the wired train_val and deploy nets, the solver, the image lists and
labels, ``train.sh``/``train.bat`` and a manifest of inputs (sizes, hashes) and the command.
It is built beside its final place and renamed into it, so it is either complete or absent.
"""

from contextlib import nullcontext
from pathlib import Path

from caffegen.errors import CaffegenError
from caffegen.job.options import CLASSIFICATION, ENGINES, SEGMENTATION, JobOptions, Stage, parse_stages
from caffegen.job.prepare.build import Checks, PreparedJob, build_run
from caffegen.job.prepare.databases import check_lmdb_options, scratch_beside
from caffegen.job.prepare.inputs import apply_strategy, existing_file, job_dataset, with_defaults, zoo_note
from caffegen.job.prepare.request import Request
from caffegen.job.prepare.variants import prepare_segmentation, prepare_stages
from caffegen.job.prepare.writing import planned_cache, write_run_dir
from caffegen.job.rundir import refuse_if_launched

__all__ = ["ENGINES", "SEGMENTATION", "JobOptions", "PreparedJob", "Stage", "parse_stages", "prepare"]


def prepare(options, run_dir, force=False, caffe="caffe", warn=None, stages=(), budget=None, databases=None,
            reuse_from=()):
    """Write the run directory for ``options``; refuse an existing one unless ``force``.

    With ``stages``, the directory holds one run per stage (stage1/, stage2/, …); each stage
    starts from the final weights of the one before. With ``budget`` (a MemoryBudget), a job whose
    estimated peak memory exceeds it is refused too, unless ``force``. With ``options.lmdb``,
    ``databases`` (a :class:`~caffegen.run.lmdb.DatabaseBuilder`) builds the LMDBs; those of the
    run directory it replaces, or of the run directories ``reuse_from``, are reused when their images
    are unchanged.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not force:
        raise CaffegenError("run directory exists; pass --force to replace it", run_dir)
    refuse_if_launched(run_dir, "replace it")
    options.check()
    check_lmdb_options(options, stages, databases)
    weights = existing_file(options.weights, "weights")
    request = Request(run_dir, weights, caffe, force, warn, tuple(stages), budget, databases, tuple(reuse_from))
    return PREPARERS[options.task](options, request)


def _prepare_classification(options, request):
    """Write a classification run directory: one run, or one per stage."""
    dataset = job_dataset(options, request.warn)
    options, notes = apply_strategy(options, dataset)
    options = with_defaults(options)
    notes += zoo_note(options)
    say = request.warn or notes.append
    memory = Checks(request.budget, request.force, options.net)
    if request.stages:
        job = prepare_stages(options, request.stages, dataset, request.weights, request.run_dir, request.caffe,
                             memory, say)
        job.notes[:0] = notes
        return job
    build, plan = _build_one(options, request, dataset, memory, say)
    return PreparedJob(request.run_dir, build.manifest, notes + build.notes, plan)


def _build_one(options, request, dataset, memory, say):
    """Build and write the one run of ``request``, its LMDBs built in a scratch folder beside it; return the build
    and its cache plan (None for a run that caches no features)."""
    run_dir, weights = request.run_dir, request.weights
    with scratch_beside(run_dir) if options.lmdb else nullcontext() as scratch:
        build_databases = None
        if options.lmdb:
            reusable = ([run_dir] if run_dir.is_dir() else []) + list(request.reuse_from)
            build_databases = lambda plan: request.databases(plan, scratch, reusable)  # noqa: E731
        build = build_run(options, dataset, weights, weights, request.caffe, memory, say, build_databases)
        check = planned_cache(memory, options.device, build) if options.cache_features else None
        cache_notes, plan = write_run_dir(run_dir, build.files, build.copies, check, build.moves) or ([], None)
        build.notes += cache_notes
    return build, plan


# How each task's run directory is prepared.
PREPARERS = {CLASSIFICATION: _prepare_classification, SEGMENTATION: prepare_segmentation}
