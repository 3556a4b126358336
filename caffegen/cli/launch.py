"""``caffegen launch``: run a prepared fine-tuning job with real Caffe and watch it, here or on Slurm."""

import click

from caffegen.cli.options import CAFFE_OPTION, gpu_option, slurm_options, tracking_options, tracking_settings
from caffegen.errors import CaffegenError
from caffegen.job.rundir import RunDir
from caffegen.reporting import reporter_for_stderr


@click.command("launch")
@click.argument("run_dir", metavar="RUN_DIR", type=click.Path(path_type=str))
@click.option("--resume", is_flag=True, help="Continue from the newest .solverstate of the run.")
@gpu_option("as prepared")
@CAFFE_OPTION
@click.option("--features-only", is_flag=True,
              help="With a run prepared with --cache-features: compute (or reuse) its trunk features, train nothing.")
@click.option("--shard", metavar="I/N",
              help="With --features-only: compute shard I of N (from 0) of the features, as a task of --slurm's array.")
@click.option("--evaluate", "evaluate_after", is_flag=True,
              help="When training ends well, evaluate the model on the validation images (RUN_DIR/eval).")
@slurm_options("With a run prepared with --cache-features: compute its features in a Slurm job array, one task per "
               "shard, then train the head in a job after it.", "both jobs' scripts")
@click.option("--shards", type=click.IntRange(min=1), metavar="N",
              help="With --slurm: the number of shards (default: one per 1,000 images, at most 64).")
@tracking_options("Send the run to these trackers while it trains: tensorboard, mlflow (default: as prepared).")
@click.pass_context
def launch_command(ctx, run_dir, resume, gpu, caffe_path, features_only, shard, evaluate_after, slurm, shards,
                   slurm_opts, no_submit, report_to, mlflow_uri):
    """Run `caffe train` for RUN_DIR with a live progress bar, curves and plain-language diagnosis.

    Caffe's log goes to RUN_DIR/train.log, the curves to curves.csv and curves.png. Ctrl-C makes
    Caffe snapshot and stop; continue with --resume. The exit code is Caffe's, 3 when caffegen
    stopped a failing run, 130 after Ctrl-C. With --slurm, a cached run's trunk features are
    computed in shards on the cluster (slurm_features.sh), then slurm_head.sh trains the head.
    """
    from caffegen.run.cache import extract_features, extract_features_shard
    from caffegen.run.evaluate import evaluate_validation, metrics_line
    from caffegen.run.launch import launch
    from caffegen.run.runner import summary_lines
    from caffegen.run.shards import parse_shard
    from caffegen.run.target import resolve_target
    reporter = reporter_for_stderr()
    _check_modes(resume, features_only, shard, slurm, shards, slurm_opts, no_submit, report_to or mlflow_uri)
    if slurm:
        run = cached_run(run_dir, resume, "--slurm")
        trackers = run.manifest.report_to if report_to is None else report_to
        _launch_on_slurm(run, shards, slurm_opts, caffe_path, gpu, evaluate_after, no_submit, bool(trackers),
                         reporter)
        if trackers and not no_submit:
            from caffegen.strategies.watching import watch_in_background
            watch_in_background(run.path, trackers, tracking_settings(mlflow_uri), reporter)
        return
    if features_only:
        run, target = cached_run(run_dir, resume, "--features-only"), resolve_target(caffe_path, gpu)
        if shard:
            number, count = parse_shard(shard)
            store, images, seconds = extract_features_shard(run, target, number, count, reporter)
            reporter.line(f"trunk features, shard {shard}: {seconds:.1f} s ({images} images computed) in {store.path}")
            return
        features = extract_features(run, target, reporter)
        reporter.line(f"trunk features: {features.seconds:.1f} s ({'reused' if features.reused else 'computed'}) "
                      f"in {features.store.path}")
        return
    target = resolve_target(caffe_path, gpu)
    with _tracking(run_dir, report_to, mlflow_uri) as watch:
        watch.follow([run_dir])
        result = launch(run_dir, target, resume, reporter)
        for line in summary_lines(result, run_dir):
            reporter.line(line)
        if evaluate_after and result.exit_code == 0:
            reporter.line(f"evaluation: {metrics_line(evaluate_validation(target, run_dir, reporter=reporter))}")
    ctx.exit(result.exit_code)


def _tracking(run_dir, report_to, mlflow_uri):
    """While inside, a watch process of its own sends the run to the trackers asked for or prepared with."""
    from caffegen.strategies.watching import watching
    return watching(RunDir(run_dir).manifest.report_to if report_to is None else report_to,
                    tracking_settings(mlflow_uri))


def _check_modes(resume, features_only, shard, slurm, shards, slurm_opts, no_submit, tracking):
    """Refuse options that cannot go together, before anything runs."""
    from caffegen.run.shards import parse_shard
    if tracking and features_only:
        raise CaffegenError("--report-to follows a run as it trains; --features-only trains nothing (caffegen "
                            "report-to sends its extraction later)")
    if tracking and no_submit:
        raise CaffegenError("--report-to follows the jobs once submitted; with --no-submit, follow them after sbatch "
                            "with: caffegen watch --report-to TRACKERS RUN_DIR")
    if (shards or slurm_opts or no_submit) and not slurm:
        raise CaffegenError("--shards, --slurm-opt and --no-submit go with --slurm")
    if slurm and (resume or features_only or shard):
        raise CaffegenError("--slurm launches the whole cached run on the cluster: give it without --resume, "
                            "--features-only or --shard")
    if shard and not features_only:
        raise CaffegenError("--shard goes with --features-only: it computes one shard of the features")
    if shard and parse_shard(shard) is None:
        raise CaffegenError(f"--shard takes I/N, shard I of N counting from 0 (such as 0/4), got '{shard}'")


def cached_run(run_dir, resume, option="--features-only"):
    """The run directory that ``option`` takes: one prepared with --cache-features."""
    run = RunDir(run_dir)
    if resume or not run.caches_features:
        raise CaffegenError(f"{option} takes a run prepared with --cache-features, without --resume", run.path)
    return run


def _launch_on_slurm(run, shards, slurm_opts, caffe_path, gpu, evaluate_after, no_submit, watched, reporter):
    """Write (and unless ``no_submit``, submit) the run's shards and head jobs; a run ``watched`` from here is not
    also sent to trackers by its head's job."""
    from caffegen.strategies.cluster import default_shards, pin_cache_batch, submit_cluster, write_cluster_scripts
    from caffegen.strategies.slurm import FEATURES_SCRIPT, HEAD_SCRIPT, log_name, sbatch_line
    shards = shards or default_shards(run)
    features, head = write_cluster_scripts(run, shards, slurm_opts, caffe_path, gpu, evaluate_after,
                                           tracked_elsewhere=watched and not no_submit)
    batch = f"every shard runs {pin_cache_batch(run, slurm_opts).line()}, recorded in {run.manifest_path}"
    if no_submit:
        reporter.line(batch)
        reporter.line(f"wrote {features} ({shards} shards) and {head}; submit them with: {sbatch_line(features)}, "
                      f"then: {sbatch_line(head, after_job=True)} (JOB: the first job's id)")
        return
    array, job = submit_cluster(features, head)
    reporter.line(batch)
    click.echo(job)
    reporter.line(f"submitted the trunk features as job array {array} ({shards} shards); "
                  f"logs: {run.path / log_name(FEATURES_SCRIPT, array, '*')}")
    reporter.line(f"submitted the head's training as job {job}, to start when every shard succeeded; "
                  f"log: {run.path / log_name(HEAD_SCRIPT, job)}")
    reporter.line(f"follow them with: squeue -j {array},{job}")
