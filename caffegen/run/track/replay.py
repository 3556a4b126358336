"""Sending what run directories hold (runs that ended, or that started without tracking) to trackers: every event
not sent yet (events.jsonl, or train.log parsed), the parameters, and the outcome."""

from caffegen.run.track.channel import Channel


def report_to(tracked, names, settings, reporter, again=False):
    """Send the ``tracked`` runs to the trackers ``names`` (``again``: all of it, as new runs, whatever was sent
    before); return the channels that could not take it all."""
    failed = []
    for run in tracked:
        for name in names:
            channel = Channel(name, run, settings, reporter, again)
            try:
                if not (channel.deliver() and (run.run.result() is None or channel.finish())):
                    failed.append(channel)
            finally:
                channel.close()
    return failed
