"""The interface every tracker offers, the runs they are given, and the table of trackers by name.

A new tracker is one module with a :class:`Tracker` subclass and one entry of ``TRACKERS``; it is
imported only when asked for, so that ``--help`` loads none of them.
"""

import importlib
from dataclasses import dataclass, field
from pathlib import Path

from caffegen.errors import CaffegenError

TRACKERS = {
    "tensorboard": "caffegen.run.track.tensorboard:TensorBoardTracker",
    "mlflow": "caffegen.run.track.mlflow:MLflowTracker",
}


@dataclass(frozen=True)
class Group:
    """Runs compared together (a sweep): its folder, its name, and its members' names."""

    path: Path
    name: str
    members: tuple = ()


@dataclass(frozen=True)
class Tracked:
    """One run as trackers see it: its :class:`RunDir`, its name, the folder of local stores (its own, or its
    group's), its group and the values that set it apart from the group's other runs (``hparams``)."""

    run: object
    name: str
    home: Path
    group: Group = None
    hparams: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    """Where trackers send what they are given: ``mlflow_uri`` (None: $MLFLOW_TRACKING_URI, or a local store)."""

    mlflow_uri: str = None


class Tracker:
    """Receives one run: ``open`` (start it, or continue it from ``memo``), ``send`` points, ``finish`` with its
    outcome, ``close``. Any method may raise when the tracker is down; what it was given is given again."""

    def __init__(self, tracked, settings):
        self.tracked, self.settings = tracked, settings

    @classmethod
    def check_installed(cls):
        """Refuse, in one line naming what to install, a tracker whose library is missing."""

    @classmethod
    def warm_up(cls, settings):
        """Do ahead what every run sent with ``settings`` will need (import the library, make a store), while
        the command that started the watch prepares the runs."""

    @classmethod
    def cool_down(cls):
        """Remove what :meth:`warm_up` left (a scratch store), before a watch ends without the interpreter's
        clean-up."""

    def destination(self):
        """Where this run goes, in words (a folder, a URI): what was sent there is remembered under it."""
        raise NotImplementedError

    def open(self, memo, params):
        """Start the run, or continue the one ``memo`` names, with ``params``; return the memo to continue it."""
        raise NotImplementedError

    def send(self, points):
        """Record ``points`` (:class:`~caffegen.run.track.points.Point`)."""
        raise NotImplementedError

    def finish(self, outcome):
        """Record the run's :class:`~caffegen.run.track.summary.Outcome` and mark it ended."""
        raise NotImplementedError

    def close(self):
        """Let go of what the tracker holds (files, connections)."""


def tracker_names(text):
    """The tracker names of ``text`` (``tensorboard,mlflow``; ``none`` for none), refusing one that is not in the
    table in one line."""
    if (text or "").strip().lower() == "none":
        return ()
    names = tuple(dict.fromkeys(part.strip() for part in (text or "").split(",") if part.strip()))
    unknown = [name for name in names if name not in TRACKERS]
    if unknown or not names:
        raise CaffegenError(f"unknown tracker {', '.join(unknown) or repr(text)}; choose among "
                            f"{', '.join(TRACKERS)} (comma-separated), or none")
    return names


def tracker_class(name):
    """The :class:`Tracker` subclass of the tracker ``name``, imported now."""
    module, attribute = TRACKERS[name].split(":")
    tracker = getattr(importlib.import_module(module), attribute)
    tracker.check_installed()
    return tracker
