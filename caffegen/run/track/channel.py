"""One run carried to one tracker: the events not yet sent read from the run directory, sent, and how far it got
recorded. A tracker that is down or failing costs one line; its events stay in the run directory and go when it is
back, so nothing is lost and nothing held up."""

from dataclasses import replace

from caffegen.errors import CaffegenError
from caffegen.run.track.events import read_events
from caffegen.run.track.points import points_of
from caffegen.run.track.state import Sent, read_sent, record_sent
from caffegen.run.track.summary import run_outcome, run_params
from caffegen.run.track.tracker import tracker_class


class Channel:
    """The run ``tracked`` (a :class:`Tracked`) on the tracker ``name``; ``reporter`` hears when it is down or back.
    With ``again``, what was sent before is forgotten: everything goes again, as a new run."""

    def __init__(self, name, tracked, settings, reporter, again=False):
        self.name, self.tracked, self.reporter = name, tracked, reporter
        self.tracker = tracker_class(name)(tracked, settings)
        self.key = f"{name} {self.tracker.destination()}"
        self.sent = Sent() if again else read_sent(tracked.run.path, self.key)
        self.opened, self.down = False, False

    def deliver(self):
        """Send the events appended since the last delivery; whether the tracker took them."""
        events, position = read_events(self.tracked.run.path, self.sent.position)
        if not events and position == self.sent.position:
            return True
        points, axis = points_of(events, self.sent.axis)

        def send():
            self._open()
            if points:
                self.tracker.send(points)
        if not self._attempt(send):
            return False
        self._record(replace(self.sent, position=position, axis=axis))
        return True

    def finish(self):
        """Record the run's outcome once it ended (again when it changed: evaluated, relaunched); whether done."""
        outcome = run_outcome(self.tracked.run)
        if outcome is None:
            return False
        if outcome.fingerprint() == self.sent.finished:
            return True

        def finish():
            self._open()
            self.tracker.finish(outcome)
        if not self._attempt(finish):
            return False
        self._record(replace(self.sent, finished=outcome.fingerprint()))
        return True

    def close(self):
        """Let the tracker go; what it did not take stays to be sent by a later watch or report-to."""
        if self.opened:
            self._attempt(self.tracker.close)

    def _open(self):
        """Open the tracker's run once: a new one, or the one the memo recorded names."""
        if not self.opened:
            memo = self.tracker.open(self.sent.memo, run_params(self.tracked.run))
            self.opened = True
            if memo != self.sent.memo:
                self._record(replace(self.sent, memo=memo))

    def _attempt(self, action):
        """Run ``action`` against the tracker; one line when it first fails, one when it works again."""
        try:
            action()
        except CaffegenError:
            raise
        except Exception as error:  # noqa: BLE001 - whatever a tracker's library raises when it is down
            if not self.down:
                self.reporter.line(f"{self.name}: {self.tracker.destination()} is not taking {self.tracked.name}'s "
                                   f"events ({_first_line(error)}); they are kept and sent when it is back")
            self.down = True
            return False
        if self.down:
            self.reporter.line(f"{self.name}: {self.tracker.destination()} is back; sending {self.tracked.name}'s "
                               "events kept")
        self.down = False
        return True

    def _record(self, sent):
        self.sent = sent
        record_sent(self.tracked.run.path, self.key, sent)


def _first_line(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__
