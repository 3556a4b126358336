"""A run's events, appended to ``events.jsonl`` in its run directory as they happen, one JSON object a line.

Each line is one complete event (``progress``, ``test_result``, ``snapshot``, ``diagnosis``) written by
one ``write`` to a file opened for appending, so a reader never sees half a line: a run on this
machine, on another GPU or on a cluster node is watched the same way, by reading its directory.
"""

import dataclasses
import json
import os
import re
import time
from pathlib import Path

from caffegen.errors import cannot_write


def event_line(event, now=None):
    """The JSON line of ``event`` (a dataclass of :mod:`caffegen.run.caffelog` or a Diagnosis): its kind, the time,
    its fields."""
    fields = {"event": event_kind(event), "time": round(time.time() if now is None else now, 3)}
    fields.update(dataclasses.asdict(event))
    return json.dumps(fields, default=str) + "\n"


def event_kind(event):
    """The ``event`` field of a line: the event's class name in snake case (``TestResult`` → ``test_result``)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(event).__name__).lower()


class EventLog:
    """``events.jsonl`` of a run directory, open for appending while the run goes on."""

    def __init__(self, path):
        self.path = Path(path)
        self.fd = None

    def __enter__(self):
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as error:
            raise cannot_write(error, self.path) from None
        return self

    def __exit__(self, *exc):
        os.close(self.fd)

    def write(self, events):
        """Append ``events``, each as one line written whole."""
        for event in events:
            try:
                os.write(self.fd, event_line(event).encode("utf-8"))
            except OSError as error:
                raise cannot_write(error, self.path) from None
