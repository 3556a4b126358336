"""``caffegen launch``: run a prepared fine-tuning job with real Caffe and watch it."""

import click

from caffegen.errors import CaffegenError
from caffegen.job.rundir import RunDir
from caffegen.run.cache import extract_features
from caffegen.run.evaluate import evaluate_validation, metrics_line
from caffegen.run.launch import launch
from caffegen.run.runner import summary_lines
from caffegen.run.target import resolve_target


@click.command("launch")
@click.argument("run_dir", metavar="RUN_DIR", type=click.Path(path_type=str))
@click.option("--resume", is_flag=True, help="Continue from the newest .solverstate of the run.")
@click.option("--gpu", metavar="ID|all|cpu", help="0, 0,1, all or cpu (default: as prepared).")
@click.option("--caffe", "caffe_path", type=click.Path(path_type=str), help="The caffe binary.")
@click.option("--features-only", is_flag=True,
              help="With a run prepared with --cache-features: compute (or reuse) its trunk features, train nothing.")
@click.option("--evaluate", "evaluate_after", is_flag=True,
              help="When training ends well, evaluate the model on the validation images (RUN_DIR/eval).")
@click.pass_context
def launch_command(ctx, run_dir, resume, gpu, caffe_path, features_only, evaluate_after):
    """Run `caffe train` for RUN_DIR with a live progress bar, curves and plain-language diagnosis.

    Caffe's log goes to RUN_DIR/train.log, the curves to curves.csv and curves.png. Ctrl-C makes
    Caffe snapshot and stop; continue with --resume. The exit code is Caffe's, 3 when caffegen
    stopped a failing run, 130 after Ctrl-C.
    """
    echo = lambda line: click.echo(line, err=True)  # noqa: E731
    if features_only:
        features = extract_features(cached_run(run_dir, resume), resolve_target(caffe_path, gpu), echo)
        echo(f"trunk features: {features.seconds:.1f} s ({'reused' if features.reused else 'computed'}) "
             f"in {features.store.path}")
        return
    target = resolve_target(caffe_path, gpu)
    result = launch(run_dir, target, resume, echo)
    for line in summary_lines(result, run_dir):
        echo(line)
    if evaluate_after and result.exit_code == 0:
        echo(f"evaluation: {metrics_line(evaluate_validation(target, run_dir, echo=echo))}")
    ctx.exit(result.exit_code)


def cached_run(run_dir, resume):
    """The run directory whose features --features-only computes: one prepared with --cache-features."""
    run = RunDir(run_dir)
    if resume or not run.caches_features:
        raise CaffegenError("--features-only takes a run prepared with --cache-features, without --resume", run.path)
    return run
