"""Preparing a fine-tuning job: a self-contained run directory that ``caffe train`` can run.

The directory holds the wired train_val and deploy nets, the solver, the image lists and
labels, ``train.sh``/``train.bat`` and a manifest of inputs (sizes, hashes) and the command.
It is built beside its final place and renamed into it, so it is either complete or absent.
"""

from contextlib import nullcontext
from pathlib import Path

from caffegen.errors import CaffegenError
from caffegen.job.options import ENGINES, SEGMENTATION, JobOptions, Stage, parse_stages
from caffegen.job.prepare.build import Checks, PreparedJob, build_run
from caffegen.job.prepare.databases import check_lmdb_options, scratch_beside
from caffegen.job.prepare.inputs import apply_strategy, existing_file, job_dataset, with_defaults, zoo_note
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
    if options.task == SEGMENTATION:
        return prepare_segmentation(options, run_dir, weights, caffe, stages, force)
    dataset = job_dataset(options, warn)
    options, notes = apply_strategy(options, dataset)
    options = with_defaults(options)
    notes += zoo_note(options)
    say = warn or notes.append
    memory = Checks(budget, force, options.net)
    if not stages:
        with scratch_beside(run_dir) if options.lmdb else nullcontext() as scratch:
            build_databases = None
            if options.lmdb:
                reusable = ([run_dir] if run_dir.is_dir() else []) + list(reuse_from)
                build_databases = lambda plan: databases(plan, scratch, reusable)  # noqa: E731
            build = build_run(options, dataset, weights, weights, caffe, memory, say, build_databases)
            check = planned_cache(memory, options.device, build) if options.cache_features else None
            cache_notes, plan = write_run_dir(run_dir, build.files, build.copies, check, build.moves) or ([], None)
        return PreparedJob(run_dir, build.manifest, notes + build.notes + cache_notes, plan)
    job = prepare_stages(options, stages, dataset, weights, run_dir, caffe, memory, say)
    job.notes[:0] = notes
    return job
