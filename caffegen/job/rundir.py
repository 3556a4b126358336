"""A prepared run directory: where each of its files lies, its manifest read once, its result, and the checks
made before Caffe runs in it. Only this module reads and writes manifest.json and result.json."""

import functools
import os
import re
from dataclasses import replace
from pathlib import Path

from caffegen.errors import CaffegenError
from caffegen.io.caffemodel import cut_short
from caffegen.io.files import write_atomic
from caffegen.io.lists import read_list
from caffegen.io.locks import holder, refuse_if_held, sole_lock
from caffegen.io.prototxt import read_net, read_solver, to_text
from caffegen.io.quoting import sh_command
from caffegen.job.device import Device
from caffegen.job.manifest import Manifest, RunResult, read_record
from caffegen.net.classaxis import classifier_outputs

MANIFEST = "manifest.json"
SNAPSHOT_DIR = "snapshots"
SNAPSHOT_NAME = re.compile(r"_iter_(\d+)\.solverstate$")
LISTS = ("train.txt", "val.txt")
RESULT = "result.json"
EVENTS = "events.jsonl"  # what the run said as it went: progress, test results, snapshots, diagnoses
CURVES_CSV, CURVES_PNG = "curves.csv", "curves.png"
LAUNCH_LOCK = ".launch.lock"  # held by the caffegen launch training in the run directory
EVAL_DIR = "eval"  # where caffegen evaluate writes by default
TRAIN_VAL, DEPLOY, SOLVER, LOG = "train_val.prototxt", "deploy.prototxt", "solver.prototxt", "train.log"


class RunDir:
    """A run directory written by ``caffegen prepare``, and what its manifest records."""

    def __init__(self, path):
        self.path = Path(path).resolve()
        if not self.manifest_path.is_file():
            raise CaffegenError(f"not a caffegen run directory (no {MANIFEST}); create one with caffegen prepare",
                                path)
        self.manifest = read_record(Manifest, self.manifest_path, "prepare the run again")
        try:
            Device.parse(self.manifest.device)
        except CaffegenError as error:
            raise CaffegenError(f"unreadable manifest ({error}); prepare the run again", self.manifest_path) from None

    def __truediv__(self, name):
        return self.path / name

    def __str__(self):
        return str(self.path)

    manifest_path = property(lambda self: self.path / MANIFEST)
    train_val = property(lambda self: self.path / TRAIN_VAL)
    deploy = property(lambda self: self.path / DEPLOY)
    solver = property(lambda self: self.path / SOLVER)
    lists = property(lambda self: [self.path / name for name in LISTS])
    snapshots = property(lambda self: self.path / SNAPSHOT_DIR)

    @functools.cached_property
    def cache_plan(self):
        """A cached run's CachePlan (trunk, boundary blob, sizes, the weights checked), worked out once: every step
        of one command that needs it gets it from the RunDir the command loaded."""
        from caffegen.job.cacheplan import plan_cache  # which reads RunDir: a circle, if imported above
        return plan_cache(self)

    @property
    def device(self):
        """The device the run was prepared for."""
        return Device.parse(self.manifest.device)

    @property
    def stages(self):
        """The run directories of a staged job's stages, in order; empty for a single run."""
        return [RunDir(self.path / stage.dir) for stage in self.manifest.stages]

    @property
    def caches_features(self):
        return self.manifest.cache_features

    @property
    def feature_store(self):
        """The folder of feature stores this run shares with others, or None: its own features/."""
        shared = self.manifest.feature_store
        return (self.path / shared).resolve() if shared else None

    @property
    def engine(self):
        """What computes a cached run's trunk features."""
        return self.manifest.engine

    @property
    def cache_batch(self):
        """The extraction's mini-batch that ``--cache-batch`` asked for, or None: chosen when it runs."""
        return self.manifest.cache_batch

    def launching(self):
        """Hold the run directory for one launch; a second launch is refused, naming the first's process."""
        return sole_lock(self.path / LAUNCH_LOCK, _launch_busy(self.path, "launch it again"))

    def record(self, **fields):
        """Change ``fields`` of the manifest, on disk too."""
        self.manifest = replace(self.manifest, **fields)
        write_atomic(self.manifest_path, self.manifest.to_json())
        self.__dict__.pop("cache_plan", None)  # it holds what the manifest said

    @property
    def input_shape(self):
        """The deploy net's input (N, C, H, W), as prepare worked it out."""
        if self.manifest.input_shape is None:
            raise CaffegenError("the manifest records no input shape (prepared by an older caffegen); "
                                "prepare the run again", self.manifest_path)
        return self.manifest.input_shape

    def result(self):
        """How the run's training ended (a RunResult), or None before it has."""
        return read_result(self.path)

    def weights(self):
        """The weights the run starts from, refusing them when they are gone."""
        weights = self.path / self.manifest.weights
        if not weights.is_file():
            raise CaffegenError("the pretrained weights named in the manifest are missing", weights)
        return weights

    def trained_weights(self):
        """The weights the run's training ended with, refusing a run that has not trained yet."""
        result = self.result()
        found = recorded_path(self.path, result.final_model) if result and result.final_model else None
        if found is not None and found.is_file():
            return found
        raise CaffegenError(f"no trained model here yet; train it first with: "
                            f"{sh_command('caffegen', 'launch', self.path)}", self.path)

    def match_solver_mode(self, device, reporter):
        """Make solver_mode agree with ``device``: Caffe takes GPU mode from the solver when -gpu is absent."""
        path = self.solver
        solver = read_solver(path)
        mode = solver.CPU if device.is_cpu else solver.GPU
        if solver.solver_mode != mode:
            solver.solver_mode = mode
            write_atomic(path, to_text(solver))
            reporter.line(f"set solver_mode to {'CPU' if device.is_cpu else 'GPU'} in {path.name}")

    def check_labels(self):
        """Refuse lists with labels the classifier cannot score: Caffe's release builds do not check them."""
        outputs = list(classifier_outputs(read_net(self.train_val).net).values())
        if not outputs:
            return
        count = min(outputs)
        for path in self.lists:
            if not path.is_file():
                continue
            for line in read_list(path):
                if line.label_number is None or not 0 <= line.label_number < count:
                    raise CaffegenError(f"label '{line.label}' is not in 0…{count - 1}, but the classifier has "
                                        f"{count} outputs: Caffe would train on garbage (its release builds do "
                                        "not check labels); fix the list or retarget with caffegen head",
                                        path, line.number)


def is_run_dir(path):
    """Whether ``path`` holds a run directory's manifest (RunDir reads it)."""
    return (Path(path) / MANIFEST).is_file()


def write_result(run_dir, result):
    """Record ``result`` (a RunResult) in ``run_dir`` (a stage's folder too) as how its training ended."""
    write_atomic(Path(run_dir) / RESULT, result.to_json())


def read_result(run_dir):
    """The RunResult of ``run_dir`` (a stage's folder too), or None where training has not ended there."""
    path = Path(run_dir) / RESULT
    return read_record(RunResult, path, "train it again") if path.is_file() else None


def manifest_file(manifest):
    """{file name: text} of ``manifest``, for the files prepare writes into a run directory."""
    return {MANIFEST: manifest.to_json()}


def refuse_if_launched(run_dir, what):
    """Refuse to ``what`` (such as "replace it") while a caffegen launch trains in ``run_dir``."""
    refuse_if_held(Path(run_dir) / LAUNCH_LOCK, _launch_busy(run_dir, what))


def is_training(run_dir):
    """Whether a caffegen launch is training in ``run_dir`` now."""
    return holder(Path(run_dir) / LAUNCH_LOCK) is not None


def _launch_busy(run_dir, what):
    """The refusal to ``what`` while the launch of process ``pid`` trains in ``run_dir``, given its pid."""
    return lambda pid: CaffegenError(f"a caffegen launch (process {pid}) is training in this run directory: wait for "
                                     f"it to end, or stop it, before you {what}", run_dir)


def recorded_path(run_dir, recorded):
    """A file that ``run_dir`` records (result.json's final model), always inside the run directory.

    It is recorded relative to the run directory, so that a copy of the directory names its own
    files. An absolute path (as an older caffegen wrote) is read as the longest of its tails that
    lies in the run directory; None where none does.
    """
    run_dir = _lexical(run_dir)
    path = Path(recorded)
    tails = [Path(*path.parts[start:]) for start in range(1, len(path.parts))] if path.is_absolute() else [path]
    for tail in tails:
        candidate = _lexical(run_dir / tail)
        if candidate.is_relative_to(run_dir) and candidate.exists():
            return candidate
    return None


def _lexical(path):
    """``path`` absolute, with its ``..`` resolved by name: a snapshot folder that is a link to scratch space
    stays inside the run directory."""
    return Path(os.path.normpath(Path(path).absolute()))


def inside(folder, name, what):
    """The file ``name`` that ``folder`` (a run directory, a bundle) records, refused unless it lies in the folder."""
    folder = Path(folder).resolve()
    path = (folder / name).resolve()
    if not path.is_relative_to(folder):
        raise CaffegenError(f"{what} names {str(name)!r}, outside its own folder, which caffegen does not read",
                            folder)
    return path


def relative_record(run_dir, path):
    """``path``, a file of ``run_dir``, as the run directory records it: relative to itself."""
    return _lexical(path).relative_to(_lexical(run_dir)).as_posix()


def newest_snapshot(run_dir, reporter=None):
    """The complete solver state with the highest iteration in the run's snapshot folder.

    A snapshot written when the disk filled up, or when Caffe was killed, is cut short: it and its
    caffemodel must both be whole, or the one before is taken, which ``reporter`` hears of.
    """
    states = sorted(((int(match.group(1)), path) for path in (Path(run_dir) / SNAPSHOT_DIR).glob("*.solverstate")
                     if (match := SNAPSHOT_NAME.search(path.name))), reverse=True)
    if not states:
        raise CaffegenError(f"nothing to resume: no .solverstate in {SNAPSHOT_DIR}/", run_dir)
    for iteration, state in states:
        problem = _snapshot_problem(state)
        if problem is None:
            return state
        if reporter:
            reporter.line(f"{state.relative_to(Path(run_dir))}: {problem}: not resumed from")
    raise CaffegenError(f"nothing to resume: every .solverstate in {SNAPSHOT_DIR}/ is incomplete", run_dir)


def _snapshot_problem(state):
    """Why the snapshot ``state`` (a .solverstate and its .caffemodel twin) cannot be resumed from, or None."""
    twin = state.with_suffix(".caffemodel")
    if not twin.is_file():
        return f"its weights {twin.name} are missing"
    for path in (state, twin):
        problem = "empty" if path.stat().st_size == 0 else cut_short(path)
        if problem:
            return f"{path.name} is cut short ({problem}; the disk full, or Caffe killed while it wrote?)"
    return None
