"""``caffegen watch``: follow run or sweep directories and forward their events to trackers as they are appended."""

import contextlib
import json
import os
import signal
import sys
import threading

import click

from caffegen.cli.options import tracking_options, tracking_settings
from caffegen.errors import CaffegenError
from caffegen.io.quoting import sh_command
from caffegen.reporting import reporter_for_stderr


@click.command("watch")
@click.argument("folders", metavar="DIR…", nargs=-1, type=click.Path(path_type=str))
@tracking_options("Trackers to forward to: tensorboard, mlflow (default: those each run was prepared with).")
@click.option("--every", "poll_s", type=click.FloatRange(min=0.05), default=1.0, show_default=True, metavar="S",
              help="Look for new events every S seconds.")
@click.option("--folders-from-stdin", "from_stdin", is_flag=True, hidden=True,
              help="Get ready, read the folders (a JSON list) from standard input's first line, and follow them, "
                   "ended runs too, until it closes: the watch a training command starts.")
@click.option("--yield-cpu", is_flag=True, hidden=True,
              help="Run at a lower CPU priority, so that the training beside it goes first: the watch a command "
                   "starts or leaves running.")
@click.pass_context
def watch_command(ctx, folders, report_to, mlflow_uri, poll_s, from_stdin, yield_cpu):
    """Forward the events of run (or sweep) directories to TensorBoard and MLflow while they train.

    Ends when every run has ended (result.json written), or on Ctrl-C or SIGTERM, after sending what
    is there. What was sent is remembered in each run directory (.track.json), so a watch started
    again sends nothing twice; a tracker that is down costs one line, and its events are sent when
    it is back. Exit code: 0 when every run ended and all was sent, 1 when not all was sent, 130
    after Ctrl-C, 143 after SIGTERM.
    """
    reporter, settings = reporter_for_stderr(), tracking_settings(mlflow_uri)
    if not folders and not from_stdin:
        raise CaffegenError("give the run or sweep directories to watch")
    if yield_cpu:
        _yield_cpu()
    stop, signals = threading.Event(), []
    with _stopped_by_signals(stop, signals):
        left = _watch(folders, report_to, settings, reporter, stop, poll_s, from_stdin)
    for channel in left:
        reporter.line(f"{channel.name}: not all of {channel.tracked.name} was sent; send the rest with: "
                      f"{sh_command('caffegen', 'report-to', channel.name, channel.tracked.run.path)}")
    if signals and not from_stdin:  # the command that started a watch says how it stopped
        reporter.line("stopped; a watch started again goes on where this one stopped")
    code = 128 + signals[0] if signals else 1 if left else 0
    if from_stdin:
        _end_now(report_to, code)
    ctx.exit(code)


def _watch(folders, names, settings, reporter, stop, poll_s, from_stdin):
    """Follow the runs of ``folders`` (or, ``from_stdin``, of the folders it is told) for the trackers ``names``
    (default: those they were prepared with) until they ended or ``stop``; the channels not done."""
    from caffegen.run.track.watch import watch
    from caffegen.strategies.sweep.tracked import tracked_runs
    if from_stdin:
        folders = _folders_when_told(names, settings)
        if folders is None:
            return []  # the command ended before it had anything to follow
        threading.Thread(target=_set_at_end_of_input, args=(stop,), name="stdin", daemon=True).start()
    tracked = tracked_runs(folders)
    names = names or tuple(dict.fromkeys(name for run in tracked for name in run.run.manifest.report_to))
    if not names:
        raise CaffegenError("no tracker to forward to: give --report-to tensorboard,mlflow (or prepare the runs "
                            "with --report-to)")
    if not from_stdin:
        reporter.line(f"watching {len(tracked)} run{'s' * (len(tracked) != 1)} for {', '.join(names)}")
    return watch(tracked, names, settings, reporter, stop, poll_s, until_stopped=from_stdin)


def _folders_when_told(names, settings):
    """Get the trackers ``names`` ready, then the folders of standard input's first line (None at its end)."""
    from caffegen.run.track.tracker import tracker_class
    for name in names:
        tracker_class(name).warm_up(settings)
    line = sys.stdin.buffer.readline()
    return json.loads(line) if line.strip() else None


def _yield_cpu():
    """Run only on time the cores have spare: Linux's idle scheduling class (its threads inherit it), which lets a
    training beside the watch go first (at niceness +10 Caffe still lost a sixth of its speed to MLflow); where there
    is none, the lowest priority a niceness gives."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)


def _end_now(names, code):
    """End the watch a command started (and waits for), all sent and its trackers closed, with ``code``, at once,
    without the interpreter's teardown of the trackers' libraries: MLflow's alone takes about a second of CPU, which
    the command, or the next one, would share."""
    from caffegen.run.track.tracker import tracker_class
    for name in names:
        tracker_class(name).cool_down()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _set_at_end_of_input(stop):
    """Set ``stop`` once standard input is closed: the command that started this watch is done (or gone)."""
    while sys.stdin.buffer.read(4096):
        pass
    stop.set()


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
