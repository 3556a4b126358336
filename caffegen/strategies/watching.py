"""The ``caffegen watch`` a command starts beside the training it runs, or leaves running after a Slurm submission.

The watch is a process of its own: it reads the run directories, and the training shares neither a
process, an interpreter lock nor a connection with a tracker. A command starts it first, before it
writes images or prepares, so that the trackers' libraries load and their stores open on the core
that this work leaves idle; the folders to follow are sent to it once they exist. It runs at a lower
CPU priority, so what it does while Caffe trains takes the time Caffe leaves. That is why tracking
costs a command little time, and a tracker that is down or slow holds up only the watch.
"""

import contextlib
import json
import os
import subprocess
from pathlib import Path

from caffegen.run.track.tracker import tracker_class
from caffegen.strategies.childlaunch import CAFFEGEN

WATCH_LOG = "watch.log"  # what a watch left running after a Slurm submission says


class Watch:
    """A watch process getting ready; :meth:`follow` gives it the run or sweep directories to follow."""

    def __init__(self, process):
        self.process = process

    def follow(self, folders):
        """Start following ``folders``, ended runs too, until the command is done."""
        if self.process is not None:
            with contextlib.suppress(BrokenPipeError):  # a watch that ended early said why; the training goes on
                self.process.stdin.write((json.dumps([str(folder) for folder in folders]) + "\n").encode())
                self.process.stdin.flush()


@contextlib.contextmanager
def watching(names, settings):
    """While inside, a ``caffegen watch`` process for the trackers ``names`` (with ``settings``) follows what it is
    told to (:class:`Watch`). On leaving, it is told to send what is left, and waited for."""
    if not names:
        yield Watch(None)
        return
    _check_installed(names)
    # A session of its own: Ctrl-C in the terminal, or a signal to the command's process group, stops the command's
    # training, and the watch, which ends when its input closes, still sends what the training wrote on its way out.
    process = subprocess.Popen(watch_argv([], names, "--folders-from-stdin"), stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, env=_environment(settings), start_new_session=True)
    try:
        yield Watch(process)
    finally:
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()
        process.wait()  # it ends once all was sent


def watch_in_background(folder, names, settings, reporter):
    """Leave a ``caffegen watch`` of the run or sweep directory ``folder`` running on its own (in a session of its
    own, writing to ``folder``/watch.log), which ends when every run has ended; say how to stop it."""
    _check_installed(names)
    folder = Path(folder).resolve()
    log = folder / WATCH_LOG
    with open(log, "ab") as output:
        process = subprocess.Popen(watch_argv([folder], names), stdin=subprocess.DEVNULL, stdout=output,
                                   stderr=subprocess.STDOUT, env=_environment(settings), start_new_session=True)
    reporter.line(f"watching {folder.name} for {', '.join(names)} here, in the background, until its runs end "
                  f"(process {process.pid}; log: {log}); stop it with: kill {process.pid}")


def watch_argv(folders, names, *options):
    """argv of the ``caffegen watch`` of ``folders`` for the trackers ``names``; a watch caffegen starts runs on the
    CPU time that training leaves."""
    return [*CAFFEGEN, "watch", *map(str, folders), "--report-to", ",".join(names), "--yield-cpu", *options]


def _check_installed(names):
    """Refuse a tracker that is not installed in one line, here, before anything runs."""
    for name in names:
        tracker_class(name)


def _environment(settings):
    """The watch's environment: the MLflow store in $MLFLOW_TRACKING_URI, never on a command line (it may hold a
    password, and ``ps`` shows command lines to everyone)."""
    environment = dict(os.environ)
    if settings.mlflow_uri:
        environment["MLFLOW_TRACKING_URI"] = settings.mlflow_uri
    return environment
