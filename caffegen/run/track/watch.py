"""Following runs as they train: their events forwarded to the trackers as they are appended, until each run
ended (result.json written, no launch training in it) or the watch is stopped; then its last events and outcome."""

import contextlib
import threading

from caffegen.job.rundir import is_training
from caffegen.run.track.channel import Channel

POLL_S = 1.0  # how often the run directories are looked at


def watch(tracked, names, settings, reporter, stop=None, poll_s=POLL_S):
    """Forward the events of the ``tracked`` runs to the trackers ``names`` until every run ended or ``stop`` (a
    threading.Event) is set; a run's outcome is recorded once it ended. Returns the channels not done."""
    stop = stop or threading.Event()
    channels = [Channel(name, run, settings, reporter) for run in tracked for name in names]
    following = list(channels)
    try:
        while following and not stop.is_set():
            following = [channel for channel in following if not _step(channel)]
            if following:
                stop.wait(poll_s)
        return [channel for channel in following if not _last_step(channel)]
    finally:
        for channel in channels:
            channel.close()


@contextlib.contextmanager
def watching(tracked, names, settings, reporter):
    """While inside, :func:`watch` runs on a thread of its own, reading the run directories (the training is not
    touched); on leaving, it sends what is left and ends."""
    if not names:
        yield
        return
    stop = threading.Event()
    thread = threading.Thread(target=watch, args=(tracked, names, settings, reporter, stop), name="watch",
                              daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _step(channel):
    """Deliver what is new; whether the channel is done (its run ended, all sent, its outcome recorded)."""
    ended = channel.tracked.run.result() is not None and not is_training(channel.tracked.run.path)
    return channel.deliver() and ended and channel.finish()


def _last_step(channel):
    """On stopping: deliver what is left and the outcome where the run ended; whether all went."""
    return channel.deliver() and (channel.tracked.run.result() is None or channel.finish())
