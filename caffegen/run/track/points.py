"""Events turned into metric points: the train loss, every test output, the learning rate and the iteration speed
against the iteration, a staged run's stages on one axis with the boundary marked, a cached run's extraction."""

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Point:
    """One value of the metric ``name`` at ``step``, measured at ``time`` (seconds since the epoch)."""

    name: str
    step: int
    value: float
    time: float


@dataclass(frozen=True)
class Axis:
    """What translating a run's events carries from one event to the next: the first iteration of the stage under
    way (a staged run's stages count from 0 each) and the chunks of features computed so far."""

    offset: int = 0
    chunks: int = 0


def points_of(events, axis):
    """(the points of ``events``, the axis after them)."""
    points = []
    for event in events:
        found, axis = _points_of_event(event, axis)
        points += found
    return points, axis


def _points_of_event(event, axis):
    """(the points of one event, the axis after it)."""
    kind, time = event.get("event"), event.get("time")
    if kind == "stage_started":
        axis = replace(axis, offset=event["first_iteration"])
        return [Point("stage", axis.offset, event["stage"], time)], axis
    if kind == "chunk_computed":
        rate = event["images"] / event["seconds"] if event["seconds"] else 0.0
        return [Point("extraction/images_per_s", axis.chunks, rate, time)], replace(axis, chunks=axis.chunks + 1)
    step = event.get("iteration", 0) + axis.offset
    if kind == "progress":
        rate = [] if event.get("rate") is None else [Point("train/iter_per_s", step, event["rate"], time)]
        return [Point("train/loss", step, event["loss"], time)] + rate, axis
    if kind == "learning_rate":
        return [Point("train/lr", step, event["lr"], time)], axis
    if kind == "test_result":
        return [Point(name, step, value, time) for name, value in event["outputs"].items()], axis
    return [], axis
