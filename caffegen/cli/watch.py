"""``caffegen watch``: follow run or sweep directories and forward their events to trackers as they are appended."""

import contextlib
import signal
import threading

import click

from caffegen.cli.options import tracking_options, tracking_settings
from caffegen.errors import CaffegenError
from caffegen.reporting import reporter_for_stderr


@click.command("watch")
@click.argument("folders", metavar="DIR…", nargs=-1, required=True, type=click.Path(path_type=str))
@tracking_options("Trackers to forward to: tensorboard, mlflow (default: those each run was prepared with).")
@click.option("--every", "poll_s", type=click.FloatRange(min=0.05), default=1.0, show_default=True, metavar="S",
              help="Look for new events every S seconds.")
@click.pass_context
def watch_command(ctx, folders, report_to, mlflow_uri, poll_s):
    """Forward the events of run (or sweep) directories to TensorBoard and MLflow while they train.

    Ends when every run has ended (result.json written), or on Ctrl-C or SIGTERM, after sending what
    is there. What was sent is remembered in each run directory (.track.json), so a watch started
    again sends nothing twice; a tracker that is down costs one line, and its events are sent when
    it is back. Exit code: 0 when every run ended and all was sent, 1 when not all was sent, 130
    after Ctrl-C, 143 after SIGTERM.
    """
    from caffegen.run.track.watch import watch
    from caffegen.strategies.sweep.tracked import tracked_runs
    reporter = reporter_for_stderr()
    tracked = tracked_runs(folders)
    names = report_to or tuple(dict.fromkeys(name for run in tracked for name in run.run.manifest.report_to))
    if not names:
        raise CaffegenError("no tracker to forward to: give --report-to tensorboard,mlflow (or prepare the runs "
                            "with --report-to)")
    reporter.line(f"watching {len(tracked)} run{'s' * (len(tracked) != 1)} for {', '.join(names)}")
    stop, signals = threading.Event(), []
    with _stopped_by_signals(stop, signals):
        left = watch(tracked, names, tracking_settings(mlflow_uri), reporter, stop, poll_s)
    if signals:
        reporter.line("stopped; a watch started again goes on where this one stopped")
        ctx.exit(128 + signals[0])
    if left:
        reporter.line(f"{len(left)} run{'s' * (len(left) != 1)} not fully sent; caffegen report-to sends the rest")
    ctx.exit(1 if left else 0)


@contextlib.contextmanager
def _stopped_by_signals(stop, signals):
    """While inside, SIGINT and SIGTERM set ``stop`` (and are listed in ``signals``): the watch sends what it read
    and ends between two steps, never in the middle of one."""
    def handle(signum, frame):
        signals.append(signum)
        stop.set()
    previous = {signum: signal.signal(signum, handle) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
