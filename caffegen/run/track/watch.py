"""Following runs as they train: their events forwarded to the trackers as they are appended, until each run
ended (result.json written, no launch training in it) or the watch is stopped; then its last events and outcome."""

import threading

from caffegen.job.rundir import is_training
from caffegen.run.track.channel import Channel

POLL_S = 1.0  # how often the run directories are looked at


def watch(tracked, names, settings, reporter, stop=None, poll_s=POLL_S, until_stopped=False):
    """Forward the events of the ``tracked`` runs to the trackers ``names`` until every run ended or ``stop`` (a
    threading.Event) is set; a run's outcome is recorded once it ended. With ``until_stopped``, an ended run is
    followed on until ``stop`` (the command that trains it goes on: it evaluates, and the outcome is recorded
    again). Each tracker has a thread of its own, so a slow one holds up no other. Returns the channels not done."""
    stop = stop or threading.Event()
    channels = [[Channel(name, run, settings, reporter) for run in tracked] for name in names]
    left = []
    followers = [threading.Thread(target=_follow, args=(group, stop, poll_s, left, until_stopped),
                                  name=f"watch {name}", daemon=True) for name, group in zip(names, channels)]
    for follower in followers:
        follower.start()
    for follower in followers:
        follower.join()
    return left


def _follow(channels, stop, poll_s, left, until_stopped):
    """Step ``channels`` (one tracker's) every ``poll_s`` until each is done (with ``until_stopped``, ever) or
    ``stop`` is set; add to ``left`` those that could not send everything."""
    following = list(channels)
    try:
        while following and not stop.is_set():
            stepped = [(channel, _step(channel)) for channel in following]
            following = [channel for channel, done in stepped if until_stopped or not done]
            if following:
                stop.wait(poll_s)
        left.extend(channel for channel in following if not _last_step(channel))
    finally:
        for channel in channels:
            channel.close()


def _step(channel):
    """Deliver what is new; whether the channel is done (its run ended, all sent, its outcome recorded)."""
    ended = channel.tracked.run.result() is not None and not is_training(channel.tracked.run.path)
    return channel.deliver() and ended and channel.finish()


def _last_step(channel):
    """On stopping: deliver what is left and the outcome where the run ended; whether all went. A tracker found down
    is not waited for again: what it did not take stays in the run directory for caffegen report-to."""
    if channel.down:
        return False
    return channel.deliver() and (channel.tracked.run.result() is None or channel.finish())
