"""An incremental parser of the log that Caffe 1.0 prints while it trains.

Caffe logs through glog (``I1124 02:22:33.123456  5399 solver.cpp:239] Iteration 20 …``); with
``GLOG_logtostderr=1`` every line reaches stderr as it happens. Between the glog lines come
lines without a prefix: the solver and net parameters Caffe echoes while it starts, protobuf's
parse errors, the stack trace of a fatal error and glibc's crash messages.

A :class:`LogWatcher` is fed those lines one at a time and returns the events each completes:
:class:`Progress` at every display, :class:`LearningRate` after it, :class:`TestResult` when a
test's outputs are complete, :class:`Snapshot` when a file is written, and
:class:`~caffegen.run.diagnose.Diagnosis` when something went wrong. Its attributes hold what the
log said so far. :func:`parse_log` reads a whole saved log at once.

Names in :attr:`LogWatcher.records`: ``loss`` is the loss of the display line (smoothed over
the solver's ``average_loss`` iterations), ``lr`` the learning rate, ``train/<name>`` each
output of the training net and ``test/<name>`` each output of test net #0 (``test1/<name>``
for test net #1, and so on). An output blob of several values gives ``<name>`` for its first
value and ``<name>[i]`` for value ``i``.
"""

import re
from dataclasses import dataclass
from typing import Optional

from caffegen.run.diagnose import Context, diagnose_crash, diagnose_fatal, diagnose_killed, diagnose_loss

GLOG_PREFIX = re.compile(r"([IWEF])(?:\d{4})?\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ ([^ \]]+):\d+\] ?(.*)")
SETTING = re.compile(r"(\w+): \"?(.*?)\"?")

DISPLAY = re.compile(r"Iteration (\d+) \((\S+) iter/s, \S+s/\d+ iters\), loss = (\S+)")
FINAL_LOSS = re.compile(r"Iteration (\d+), loss = (\S+)")
LEARNING_RATE = re.compile(r"Iteration (\d+), lr = (\S+)")
TESTING = re.compile(r"Iteration (\d+), Testing net \(#(\d+)\)")
TRAIN_OUTPUT = re.compile(r"\s*Train net output #\d+: (\S+) = (\S+)(?: \(.*\))?")
TEST_OUTPUT = re.compile(r"\s*Test net output #\d+: (\S+) = (\S+)(?: \(.*\))?")
SNAPSHOT = re.compile(r"Snapshotting (solver state )?to (?:binary proto|HDF5) file (.+)")
NO_BACKWARD = re.compile(r"(\S+) does not need backward computation\.")
FINETUNING = re.compile(r"Finetuning from (.+)")
RESUMING = re.compile(r"Resuming from (.+)")
CREATING_LAYER = re.compile(r"Creating [Ll]ayer (\S+)")
OPENING_LIST = re.compile(r"Opening file (.+)")

# A test's outputs end at the solver's next line; data threads may print in between ("Waiting for data").
SOLVER_SOURCES = ("solver.cpp", "sgd_solver.cpp", "caffe.cpp")
SOLVER_DUMP = "Initializing solver from parameters:"
NETS_BUILT = "Network initialization done."
DONE = "Optimization Done."
STOPPED_EARLY = "Optimization stopped early."
PROTOBUF_ERROR = "[libprotobuf ERROR "
TRAIN_NET = "Creating training net"
TEST_NET = "Creating test net"


@dataclass(frozen=True)
class Progress:
    """A display: the iteration, its (smoothed) loss, and iterations per second when Caffe measured them."""

    iteration: int
    loss: float
    rate: Optional[float] = None


@dataclass(frozen=True)
class TestResult:
    """The outputs of test net ``net`` at ``iteration``, keyed as in the records (``test/accuracy``)."""

    iteration: int
    net: int
    outputs: dict


@dataclass(frozen=True)
class LearningRate:
    """The learning rate the solver used at ``iteration``, as Caffe prints it after a display."""

    iteration: int
    lr: float


@dataclass(frozen=True)
class Snapshot:
    """A file Caffe wrote: ``kind`` is ``weights`` (.caffemodel) or ``solverstate``."""

    path: str
    kind: str


class LogWatcher:
    """Follows one Caffe run through its log, line by line.

    Attributes: ``iteration`` (latest, or None), ``max_iter`` (from the solver Caffe echoes, or
    None), ``records`` (one dict per iteration that printed something, in order), ``latest_test``
    (the last test's outputs and its ``iteration``), ``snapshots`` (paths written),
    ``no_backward`` (layers of the training net that Caffe does not back-propagate into),
    ``finetuned_from``, ``resumed_from``, ``done`` (Caffe printed "Optimization Done.", as it also
    does when a signal stopped it), ``stopped_early`` (a signal stopped it), ``rates`` (iterations
    per second of every display but the first, whose value is garbage), ``solver`` (the solver's
    top-level fields as printed, as strings) and ``diagnoses`` (each kind reported once). ``memory``
    is caffegen's estimate of the run's memory and how to make it fit, which an out-of-memory
    diagnosis quotes (None: it gives the usual fix).
    """

    def __init__(self, memory=None):
        self.memory = memory  # caffegen's estimate of the run's memory and its fix, for an out-of-memory diagnosis
        self.iteration = None
        self.records = []
        self.latest_test = {}
        self.snapshots = []
        self.no_backward = []
        self.finetuned_from = None
        self.resumed_from = None
        self.done = False
        self.stopped_early = False
        self.rates = []
        self.solver = {}
        self.diagnoses = []
        self._losses = []
        self._in_solver_dump = False
        self._test = None
        self._outputs_seen = {}
        self._image_list = None
        self._layer = None
        self._building_test_net = False
        self._parse_error = None

    @property
    def max_iter(self):
        """The solver's ``max_iter``, once Caffe has echoed the solver."""
        value = self.solver.get("max_iter")
        return int(value) if value is not None else None

    def feed(self, line):
        """Take one line of Caffe's output (with or without its newline); return the events it completes."""
        line = line.rstrip("\r\n")
        glog = GLOG_PREFIX.fullmatch(line)
        message = glog[3].rstrip() if glog else line
        ends_test = self._test is not None and not TEST_OUTPUT.fullmatch(message) and \
            (not glog or glog[1] == "F" or glog[2] in SOLVER_SOURCES)
        events = self._finish_test() if ends_test else []
        if glog:
            self._in_solver_dump = False
            events += self._on_glog(glog[1], glog[2], message)
        else:
            events += self._on_plain(line)
        return events

    def ended(self, exit_code):
        """Say Caffe exited with ``exit_code``; return the diagnosis of a kill its log does not explain."""
        diagnosis = None if self.diagnoses else diagnose_killed(exit_code, self._context())
        return self._diagnosed(diagnosis) if diagnosis else []

    def close(self):
        """Say the log has ended; return the events still pending (a test whose outputs ended the log)."""
        return self._finish_test() if self._test is not None else []

    def _on_glog(self, level, source, message):
        if level == "F":
            return self._diagnosed(diagnose_fatal(message, self._context()))
        for pattern, handle in self._handlers():
            match = pattern.fullmatch(message)
            if match:
                return handle(match)
        opening = OPENING_LIST.fullmatch(message)
        if opening and source.startswith("image_data_layer"):
            self._image_list = opening[1]
        self._on_milestone(message)
        return []

    def _handlers(self):
        return ((DISPLAY, self._on_display), (TRAIN_OUTPUT, self._on_train_output), (FINAL_LOSS, self._on_final_loss),
                (LEARNING_RATE, self._on_learning_rate), (TESTING, self._on_testing),
                (TEST_OUTPUT, self._on_test_output), (SNAPSHOT, self._on_snapshot), (NO_BACKWARD, self._on_no_backward),
                (FINETUNING, self._on_finetuning), (RESUMING, self._on_resuming), (CREATING_LAYER, self._on_layer))

    def _on_milestone(self, message):
        if message == SOLVER_DUMP:
            self._in_solver_dump = True
        elif message.startswith((TRAIN_NET, TEST_NET)):
            self._building_test_net = message.startswith(TEST_NET)
        elif message == NETS_BUILT:
            self._layer = None
        elif message == DONE:
            self.done = True
        elif message == STOPPED_EARLY:
            self.stopped_early = True

    def _on_plain(self, line):
        if self._in_solver_dump:
            setting = SETTING.fullmatch(line)
            if setting:
                self.solver[setting[1]] = setting[2]
            return []
        if line.startswith(PROTOBUF_ERROR):
            self._parse_error = line.split("] ", 1)[-1]
            return []
        diagnosis = diagnose_crash(line, self._context())
        return self._diagnosed(diagnosis) if diagnosis else []

    def _on_display(self, match):
        iteration, loss = int(match[1]), float(match[3])
        rate = float(match[2]) if self._losses else None
        if rate is not None:
            self.rates.append(rate)
        self._record(iteration)["loss"] = loss
        self._outputs_seen = {}
        return [Progress(iteration, loss, rate)] + self._check_loss(iteration, loss)

    def _on_final_loss(self, match):
        iteration, loss = int(match[1]), float(match[2])
        self._record(iteration)["loss"] = loss
        return [Progress(iteration, loss)] + self._check_loss(iteration, loss)

    def _on_train_output(self, match):
        if self.iteration is not None:
            self._record(self.iteration)[self._output_key("train", match[1])] = float(match[2])
        return []

    def _on_learning_rate(self, match):
        iteration, lr = int(match[1]), float(match[2])
        self._record(iteration)["lr"] = lr
        return [LearningRate(iteration, lr)]

    def _on_testing(self, match):
        iteration, net = int(match[1]), int(match[2])
        self._record(iteration)
        self._test = TestResult(iteration, net, {})
        self._outputs_seen = {}
        return []

    def _on_test_output(self, match):
        if self._test is not None:
            prefix = "test" if self._test.net == 0 else f"test{self._test.net}"
            key = self._output_key(prefix, match[1])
            self._test.outputs[key] = self._record(self._test.iteration)[key] = float(match[2])
        return []

    def _on_snapshot(self, match):
        path = match[2]
        self.snapshots.append(path)
        return [Snapshot(path, "solverstate" if match[1] else "weights")]

    def _on_no_backward(self, match):
        if not self._building_test_net and match[1] not in self.no_backward:
            self.no_backward.append(match[1])
        return []

    def _on_finetuning(self, match):
        self.finetuned_from = match[1]
        return []

    def _on_resuming(self, match):
        self.resumed_from = match[1]
        return []

    def _on_layer(self, match):
        self._layer = match[1]
        return []

    def _finish_test(self):
        test, self._test = self._test, None
        if not test.outputs:
            return []
        if self.latest_test.get("iteration") != test.iteration:
            self.latest_test = {"iteration": test.iteration}
        self.latest_test.update(test.outputs)
        return [test]

    def _record(self, iteration):
        """The record of ``iteration``, which becomes the latest iteration.

        Caffe prints everything about one iteration together, so only the last record grows.
        """
        self.iteration = iteration
        if not self.records or self.records[-1]["iteration"] != iteration:
            self.records.append({"iteration": iteration})
        return self.records[-1]

    def _output_key(self, prefix, name):
        """``prefix/name`` for an output's first value, ``prefix/name[i]`` for value i of a blob of several."""
        seen = self._outputs_seen.get(name, 0)
        self._outputs_seen[name] = seen + 1
        return f"{prefix}/{name}" if seen == 0 else f"{prefix}/{name}[{seen}]"

    def _check_loss(self, iteration, loss):
        self._losses.append((iteration, loss))
        diagnosis = diagnose_loss(self._losses, self._context())
        return self._diagnosed(diagnosis) if diagnosis else []

    def _diagnosed(self, diagnosis):
        """Keep ``diagnosis`` and return it as an event, unless its kind was already reported."""
        if any(known.kind == diagnosis.kind for known in self.diagnoses):
            return []
        self.diagnoses.append(diagnosis)
        return [diagnosis]

    def _context(self):
        return Context(solver=self.solver, weights=self.finetuned_from, snapshot=self.resumed_from,
                       image_list=self._image_list, layer=self._layer, parse_error=self._parse_error,
                       memory=self.memory)


def parse_log(lines):
    """Feed a whole log, as lines, to a new LogWatcher; return the watcher and every event in order."""
    watcher = LogWatcher()
    events = [event for line in lines for event in watcher.feed(line)]
    return watcher, events + watcher.close()
