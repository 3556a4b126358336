"""A run's events from a position on: the whole lines of events.jsonl, or, for a run that ended without one,
its train.log parsed as Caffe printed it."""

import json
from dataclasses import dataclass

from caffegen.job.rundir import EVENTS, LOG, read_result
from caffegen.reporting import event_line
from caffegen.run.caffelog import parse_log

EVENTS_SOURCE, LOG_SOURCE = "events", "log"


@dataclass(frozen=True)
class Position:
    """How far a reader got: a byte offset into events.jsonl, or a count of the events parsed from train.log."""

    source: str = EVENTS_SOURCE
    offset: int = 0


def read_events(run_dir, position):
    """(the events after ``position`` as dicts, the position after them); only whole lines are read."""
    events_path = run_dir / EVENTS
    if events_path.is_file():
        start = position.offset if position.source == EVENTS_SOURCE else 0
        events, offset = _whole_lines(events_path, start)
        return events, Position(EVENTS_SOURCE, offset)
    log = run_dir / LOG
    if log.is_file() and read_result(run_dir) is not None:  # a run without events.jsonl, ended: its log is whole
        events = _log_events(log)
        start = position.offset if position.source == LOG_SOURCE else 0
        return events[start:], Position(LOG_SOURCE, len(events))
    return [], position


def _whole_lines(path, start):
    """The events of the complete lines of ``path`` from byte ``start`` on, and the offset after the last one."""
    with path.open("rb") as stream:
        stream.seek(start)
        data = stream.read()
    end = data.rfind(b"\n") + 1
    lines = data[:end].decode("utf-8", errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.strip()], start + end


def _log_events(log):
    """The events of a whole train.log as events.jsonl would have held them, timed when the log was last written."""
    with log.open(encoding="utf-8", errors="replace") as lines:
        _, events = parse_log(lines)
    written = log.stat().st_mtime
    return [json.loads(event_line(event, written)) for event in events]
