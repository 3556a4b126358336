"""What was sent where, remembered in a small file inside the run (or sweep) directory, so that a watch started again
sends nothing twice: per tracker and destination, the position in the events, the axis, the tracker's memo (the
MLflow run) and the outcome last recorded."""

import json
import threading
from dataclasses import asdict, dataclass, field

from caffegen.io.files import write_atomic
from caffegen.run.track.events import Position
from caffegen.run.track.points import Axis

STATE = ".track.json"
WRITING = threading.Lock()  # the trackers' threads record into the same files


@dataclass(frozen=True)
class Sent:
    """How far one run got with one tracker's destination."""

    position: Position = Position()
    axis: Axis = Axis()
    memo: dict = field(default_factory=dict)
    finished: str = None


def read_sent(folder, key):
    """The :class:`Sent` recorded in ``folder`` under ``key`` (nothing sent yet where none, or unreadable)."""
    entry = _entries(folder).get(key)
    if not isinstance(entry, dict):
        return Sent()
    try:
        return Sent(Position(**entry["position"]), Axis(**entry["axis"]), dict(entry["memo"]), entry.get("finished"))
    except (KeyError, TypeError):
        return Sent()


def record_sent(folder, key, sent):
    """Record ``sent`` in ``folder`` under ``key``, beside what the other keys hold."""
    with WRITING:
        entries = _entries(folder)
        entries[key] = asdict(sent)
        write_atomic(folder / STATE, json.dumps(entries, indent=1, sort_keys=True) + "\n")


def _entries(folder):
    path = folder / STATE
    try:
        entries = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:
        return {}
    return entries if isinstance(entries, dict) else {}
