"""``caffegen prepare``: a run directory for fine-tuning a pretrained model on your images."""

import click

from caffegen.cli.joboptions import job_from_options, job_options
from caffegen.cli.options import force_option, report, report_to_option
from caffegen.io.quoting import sh_command
from caffegen.reporting import reporter_for_stderr


@click.command("prepare")
@job_options
@click.option("--stages", metavar="STAGE;STAGE…",
              help="Staged fine-tuning, e.g. 'upto=fc7,lr=0.001,epochs=5;from=conv4,lr=0.0001,epochs=5': "
                   "each stage starts from the one before.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=str), help="The run directory to create.")
@force_option("Replace an existing run directory, and prepare a job whose estimated memory exceeds the machine's "
              "(RAM available, or the GPU's free memory).")
@report_to_option("Trackers that caffegen launch sends the run to: tensorboard, mlflow (recorded in the manifest).")
def prepare_command(stages, output, force, report_to, **params):
    """Prepare a fine-tuning run: wired nets, epoch-based solver, image lists, train.sh/.bat, manifest.

    Labels are 0…K-1 in sorted class order; the classifier is retargeted to K classes. The peak memory
    of training (of the feature extraction with --cache-features) is estimated and compared with the RAM
    available here, or the GPU's free memory: a job that does not fit is refused, with the batch size and
    iter_size that fit.
    """
    from caffegen.job.options import parse_stages
    from caffegen.job.prepare import prepare
    from caffegen.run.lmdb import DatabaseBuilder
    from caffegen.run.target import memory_budget, resolve_target
    from caffegen.strategies.childlaunch import USER_CAFFEGEN, launch_command
    reporter = reporter_for_stderr()
    target = resolve_target(params["caffe_path"], params["gpu"], required=False)
    options = job_from_options(params, target, reporter)
    databases = DatabaseBuilder(target.required(), reporter) if options.lmdb else None
    job = prepare(options, output, force=force, caffe=target.caffe or "caffe", warn=reporter.line,
                  stages=parse_stages(stages) if stages else (), budget=memory_budget(options.device),
                  databases=databases)
    if report_to:
        from caffegen.job.rundir import RunDir
        RunDir(job.run_dir).record(report_to=report_to)
    report(job.notes)
    images = job.manifest.images
    reporter.line(f"prepared {job.run_dir}: {len(job.manifest.classes)} classes, {images.train} training and "
                  f"{images.val} validation images, {job.manifest.schedule.max_iter} iterations")
    next_step = launch_command(run_dir=job.run_dir, caffe=params["caffe_path"], program=USER_CAFFEGEN)
    reporter.line(f"run it with: {sh_command(*next_step)}")
