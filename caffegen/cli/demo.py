"""``caffegen demo``: the whole fine-tuning flow on the bundled model, offline, on the CPU."""

from pathlib import Path

import click

from caffegen.cli.options import CAFFE_OPTION, force_option, tracking_options, tracking_settings
from caffegen.defaults import EPOCHS
from caffegen.reporting import reporter_for_stderr


@click.command("demo")
@click.option("-o", "--output", default="caffegen-demo", show_default=True, type=click.Path(path_type=str),
              help="The run directory to create.")
@force_option("Replace an existing directory.")
@CAFFE_OPTION
@tracking_options("Send the run to these trackers as it trains: tensorboard, mlflow.")
@click.pass_context
def demo_command(ctx, output, force, caffe_path, report_to, mlflow_uri):
    """Fine-tune the bundled digits model (trained on 0–4) to the digits 5–9 with real Caffe.

    Installs Caffe into the user prefix first when none is found. Leaves a complete run
    directory (nets, solver, lists, train.log, curves, the final caffemodel, and eval/ with
    metrics and report.html) that `caffegen launch DIR` can run again.
    """
    from caffegen.strategies.demo import run_demo
    reporter = reporter_for_stderr()
    result, metrics = run_demo(output, caffe_path, force, reporter, report_to, tracking_settings(mlflow_uri))
    from caffegen.job.rundir import EVAL_DIR  # loaded by the demo, after its watch started
    from caffegen.run.evaluate import metrics_line
    from caffegen.run.report import REPORT
    from caffegen.run.runner import summary_lines
    for line in summary_lines(result, output):
        reporter.line(line)
    if metrics is not None:
        click.echo(f"evaluation: {metrics_line(metrics)}")
        reporter.line(f"demo done: {EPOCHS} epochs with the trunk frozen; report: {Path(output) / EVAL_DIR / REPORT}")
    ctx.exit(result.exit_code)
