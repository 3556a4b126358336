"""``caffegen report-to``: send run or sweep directories, finished or not, to trackers."""

import click

from caffegen.cli.options import MLFLOW_URI_OPTION, tracking_settings
from caffegen.errors import CaffegenError
from caffegen.reporting import reporter_for_stderr


@click.command("report-to")
@click.argument("trackers", metavar="TRACKER[,TRACKER…]")
@click.argument("folders", metavar="DIR…", nargs=-1, required=True, type=click.Path(path_type=str))
@MLFLOW_URI_OPTION
@click.option("--again", is_flag=True,
              help="Send everything again, as new runs (after TensorBoard's files or MLflow's store were removed).")
@click.pass_context
def report_to_command(ctx, trackers, folders, mlflow_uri, again):
    """Send runs to TensorBoard and MLflow: their curves, parameters, metrics and files.

    TRACKER is tensorboard or mlflow (comma-separated for both). Each run's events.jsonl (train.log
    for a run without one) is replayed: train loss, test outputs, learning rate and speed against
    the iteration, the manifest as parameters, result.json and eval/metrics.json as final metrics,
    curves.png, eval/report.html and the confusion matrix as files. What was sent before is not sent
    again, unless --again. TensorBoard files go to DIR/tensorboard (view them with: tensorboard --logdir DIR).
    """
    from caffegen.run.track.replay import report_to
    from caffegen.run.track.tracker import tracker_names
    from caffegen.strategies.sweep.tracked import tracked_runs
    reporter = reporter_for_stderr()
    names = tracker_names(trackers)
    if not names:
        raise CaffegenError("give the trackers to send to: tensorboard, mlflow (comma-separated)")
    tracked = tracked_runs(folders)
    failed = report_to(tracked, names, tracking_settings(mlflow_uri), reporter, again)
    for run in tracked:
        reporter.line(f"{run.name}: sent to {', '.join(names)}" if all(channel.tracked is not run for channel in failed)
                      else f"{run.name}: not all sent; run the same command again once the tracker is back")
    ctx.exit(1 if failed else 0)
