"""``caffegen launch``: run a prepared fine-tuning job with real Caffe and watch it."""

import click

from caffegen.run.launch import launch
from caffegen.run.runner import summary_lines
from caffegen.run.target import resolve_target


@click.command("launch")
@click.argument("run_dir", metavar="RUN_DIR", type=click.Path(path_type=str))
@click.option("--resume", is_flag=True, help="Continue from the newest .solverstate of the run.")
@click.option("--gpu", metavar="ID|all|cpu", help="0, 0,1, all or cpu (default: as prepared).")
@click.option("--caffe", "caffe_path", type=click.Path(path_type=str), help="The caffe binary.")
@click.pass_context
def launch_command(ctx, run_dir, resume, gpu, caffe_path):
    """Run `caffe train` for RUN_DIR with a live progress bar, curves and plain-language diagnosis.

    Caffe's log goes to RUN_DIR/train.log, the curves to curves.csv and curves.png. Ctrl-C makes
    Caffe snapshot and stop; continue with --resume. The exit code is Caffe's, 3 when caffegen
    stopped a failing run, 130 after Ctrl-C.
    """
    echo = lambda line: click.echo(line, err=True)  # noqa: E731
    result = launch(run_dir, resolve_target(caffe_path, gpu), resume, echo)
    for line in summary_lines(result, run_dir):
        echo(line)
    ctx.exit(result.exit_code)
