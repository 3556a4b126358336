"""Where a step's words go: a line, a typed event, a progress bar; on a terminal, as plain lines, or nowhere.

One reporter travels from the command down to every step. A terminal one shows live tqdm bars; a
plain one, for logs and pipes, prints a progress line at every milestone and at least every
``PLAIN_EVERY_S`` seconds; a silent one says nothing. Events go to the ``events.jsonl`` files the
reporter is ``recording`` into, one complete JSON object a line, so a run here, on another GPU or on
a cluster node is watched the same way: by reading its directory.
"""

import contextlib
import dataclasses
import json
import os
import re
import sys
import time
from pathlib import Path

from caffegen.errors import cannot_write

PLAIN_EVERY_S = 30


class Reporter:
    """Lines to ``write``; events to the event logs being recorded; progress as the subclass shows it."""

    def __init__(self, write=None):
        self.write = write if write is not None else _to_stderr
        self.logs = []

    def line(self, text):
        """Say ``text``."""
        self.write(text)

    def event(self, event):
        """Append ``event`` (a dataclass) to every event log being recorded, the same line to each."""
        line = event_line(event)
        for log in self.logs:
            log.append(line)

    @contextlib.contextmanager
    def recording(self, path):
        """While inside, events also go to ``path`` (an ``events.jsonl``), once however deeply recorded."""
        if any(log.path == Path(path) for log in self.logs):
            yield self
            return
        with EventLog(path) as log:
            self.logs.append(log)
            try:
                yield self
            finally:
                self.logs.remove(log)

    def progress(self, total, unit, desc, initial=0):
        """A progress bar as a context manager: ``advance(n)``, ``show(position, figures, milestone)``."""
        return _PlainProgress(self.write, total, unit, desc, initial)


class TerminalReporter(Reporter):
    """Live tqdm bars on stderr; lines printed above them."""

    def line(self, text):
        from tqdm import tqdm
        tqdm.write(text, file=sys.stderr)

    def progress(self, total, unit, desc, initial=0):
        return _Bar(total, unit, desc, initial)


class PlainReporter(Reporter):
    """Lines only: a progress line at every milestone and at least every ``PLAIN_EVERY_S`` seconds."""


class SilentReporter(Reporter):
    """Says nothing (events still reach the logs being recorded)."""

    def __init__(self):
        super().__init__(lambda text: None)

    def progress(self, total, unit, desc, initial=0):
        return _PlainProgress(None, total, unit, desc, initial)


def reporter_for_stderr():
    """A terminal reporter when stderr is a terminal, else a plain one."""
    return TerminalReporter() if sys.stderr.isatty() else PlainReporter()


def _to_stderr(text):
    print(text, file=sys.stderr, flush=True)


class _PlainProgress:
    """Progress as plain lines: ``desc position/total unit: figures``, at milestones and every PLAIN_EVERY_S."""

    def __init__(self, write, total, unit, desc, initial):
        self.write, self.total, self.unit, self.desc = write, total, unit, desc
        self.position, self.last_line = initial, time.monotonic()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def advance(self, count, figures=None):
        self.show(self.position + count, figures)

    def show(self, position, figures=None, milestone=False, total=None):
        self.position, self.total = position, total or self.total
        if self.write is None:
            return
        if milestone or time.monotonic() - self.last_line >= PLAIN_EVERY_S:
            self.last_line = time.monotonic()
            self.write(progress_line(self.desc, position, self.total, self.unit, figures))


def progress_line(desc, position, total, unit, figures=None):
    """``desc position/total: name value, …`` (bytes shown scaled, with their unit)."""
    if unit == "B":
        from tqdm import tqdm
        done = tqdm.format_sizeof(position, "B", 1024) + (f"/{tqdm.format_sizeof(total, 'B', 1024)}" if total else "")
    else:
        done = f"{position}" + (f"/{total}" if total else "")
    said = ", ".join(f"{name} {value}" for name, value in (figures or {}).items())
    return f"{desc} {done}" + (f": {said}" if said else "")


class _Bar:
    """tqdm's bar on stderr."""

    def __init__(self, total, unit, desc, initial):
        from tqdm import tqdm
        self.bar = tqdm(total=total or 0, initial=initial, unit=unit, desc=desc, dynamic_ncols=True, leave=True,
                        file=sys.stderr, unit_scale=unit == "B", unit_divisor=1024)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.bar.close()

    def advance(self, count, figures=None):
        self.show(self.bar.n + count, figures)

    def show(self, position, figures=None, milestone=False, total=None):
        if total and self.bar.total != total:
            self.bar.total = total
            self.bar.refresh()
        if position > self.bar.n:
            self.bar.update(position - self.bar.n)
            if figures:
                self.bar.set_postfix(figures, refresh=False)


def event_line(event, now=None):
    """The JSON line of ``event`` (a dataclass): its kind, the time, its fields."""
    fields = {"event": event_kind(event), "time": round(time.time() if now is None else now, 3)}
    fields.update(dataclasses.asdict(event))
    return json.dumps(fields, default=str) + "\n"


def event_kind(event):
    """The ``event`` field of a line: the event's class name in snake case (``TestResult`` → ``test_result``)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(event).__name__).lower()


class EventLog:
    """An ``events.jsonl``, open for appending; each event is one line written by one ``write``, never half."""

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

    def append(self, line):
        """Append one event's ``line``, written whole."""
        try:
            os.write(self.fd, line.encode("utf-8"))
        except OSError as error:
            raise cannot_write(error, self.path) from None
