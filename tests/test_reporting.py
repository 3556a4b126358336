"""The reporter: lines, events appended whole to the logs being recorded, progress on a terminal or as lines."""

import io
import json
import sys
from dataclasses import dataclass

import pytest

from caffegen import reporting
from caffegen.reporting import PlainReporter, SilentReporter, TerminalReporter, reporter_for_stderr


@dataclass
class TestPassed:
    __test__ = False
    iteration: int
    accuracy: float


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(reporting.time, "monotonic", clock)
    return clock


def read_events(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_events_go_to_every_log_being_recorded_and_only_while_it_is(tmp_path):
    outer, inner = tmp_path / "run" / "events.jsonl", tmp_path / "run" / "stage1" / "events.jsonl"
    inner.parent.mkdir(parents=True)
    reporter = SilentReporter()
    reporter.event(TestPassed(0, 0.1))  # nothing recorded yet: goes nowhere
    with reporter.recording(outer):
        reporter.event(TestPassed(1, 0.2))
        with reporter.recording(inner), reporter.recording(outer):  # the same log twice holds each event once
            reporter.event(TestPassed(2, 0.3))
        reporter.event(TestPassed(3, 0.4))
    reporter.event(TestPassed(4, 0.5))
    assert [event["iteration"] for event in read_events(outer)] == [1, 2, 3]
    assert read_events(inner) == [read_events(outer)[1]]
    assert read_events(inner)[0]["event"] == "test_passed" and read_events(inner)[0]["accuracy"] == 0.3


def test_a_log_that_cannot_be_written_is_one_line_naming_it(tmp_path):
    from caffegen.errors import CaffegenError
    with pytest.raises(CaffegenError, match="events.jsonl"):
        with SilentReporter().recording(tmp_path / "missing" / "events.jsonl"):
            pass


def test_plain_progress_is_a_line_at_each_milestone_and_at_least_every_interval(clock):
    lines = []
    with PlainReporter(lines.append).progress(100, "iter", "iteration") as progress:
        progress.show(10, {"loss": "2.3"})
        clock.now += reporting.PLAIN_EVERY_S - 1
        progress.show(20, {"loss": "2.1"})
        progress.show(25, {"loss": "2.0", "val acc": "0.500"}, milestone=True)
        clock.now += reporting.PLAIN_EVERY_S
        progress.show(60, {"loss": "1.1"})
        progress.advance(5)
    assert lines == ["iteration 25/100: loss 2.0, val acc 0.500", "iteration 60/100: loss 1.1"]


def test_plain_progress_of_bytes_is_scaled(clock):
    lines = []
    with PlainReporter(lines.append).progress(3 * 2 ** 20, "B", "model.caffemodel") as progress:
        progress.show(2 ** 20, milestone=True)
    assert lines == ["model.caffemodel 1.00MB/3.00MB"]


def test_silent_says_nothing(clock, capsys):
    reporter = SilentReporter()
    reporter.line("a line")
    with reporter.progress(10, "img", "features") as progress:
        progress.show(5, milestone=True)
    assert capsys.readouterr() == ("", "")


def test_terminal_draws_a_bar_and_lines_above_it(monkeypatch):
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    reporter = TerminalReporter()
    with reporter.progress(50, "img", "trunk features") as progress:
        progress.advance(20)
        reporter.line("reusing the cached features")
        progress.show(50, {"loss": "0.1"})
    shown = stderr.getvalue()
    assert "reusing the cached features\n" in shown and "trunk features" in shown and "50/50" in shown


def test_the_command_line_reports_plainly_unless_stderr_is_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert type(reporter_for_stderr()) is PlainReporter

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert type(reporter_for_stderr()) is TerminalReporter
