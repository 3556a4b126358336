"""A prepared run directory: its manifest, and the checks made before Caffe runs in it."""

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from caffegen.run.caffelog import parse_log
from caffegen.errors import CaffegenError
from caffegen.net.head import classifier_outputs
from caffegen.run.locate import caffe_is_cpu_only
from caffegen.io.prototxt import read_net, read_solver, to_text, write_atomic

MANIFEST = "manifest.json"
SNAPSHOT_DIR = "snapshots"
SNAPSHOT_NAME = re.compile(r"_iter_(\d+)\.solverstate$")


def load_manifest(run_dir):
    """The manifest of a run directory written by ``caffegen prepare``."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        raise CaffegenError(f"not a caffegen run directory (no {MANIFEST}); create one with caffegen prepare", run_dir)
    return json.loads(path.read_text(encoding="utf-8"))


def choose_launch_device(planned, gpu, caffe, echo):
    """--gpu as given, else the prepared device; a CPU-only Caffe never gets -gpu."""
    wanted = (gpu or planned).lower()
    if wanted != "cpu" and caffe_is_cpu_only(caffe):
        if gpu:
            raise CaffegenError(f"{caffe} is a CPU-only build and cannot use --gpu {gpu}; "
                                "drop --gpu to train on the CPU")
        echo(f"{caffe} is a CPU-only build: training on the CPU instead of GPU {planned}")
        return "cpu"
    return wanted


def match_solver_mode(run_dir, device, echo):
    """Make solver_mode agree with the device: Caffe takes GPU mode from the solver when -gpu is absent."""
    path = run_dir / "solver.prototxt"
    solver = read_solver(path)
    mode = solver.CPU if device == "cpu" else solver.GPU
    if solver.solver_mode != mode:
        solver.solver_mode = mode
        write_atomic(path, to_text(solver))
        echo(f"set solver_mode to {'CPU' if device == 'cpu' else 'GPU'} in {path.name}")


def check_labels(run_dir):
    """Refuse lists with labels the classifier cannot score: Caffe's release builds do not check them."""
    net = read_net(run_dir / "train_val.prototxt").net
    outputs = list(classifier_outputs(net).values())
    if not outputs:
        return
    for path in (run_dir / "train.txt", run_dir / "val.txt"):
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            label = line.rpartition(" ")[2]
            if line.strip() and (not label.isdigit() or int(label) >= min(outputs)):
                raise CaffegenError(f"label '{label}' is not in 0…{min(outputs) - 1}, but the classifier has "
                                    f"{min(outputs)} outputs: Caffe would train on garbage (its release builds "
                                    "do not check labels); fix the list or retarget with caffegen head", path, number)


def newest_snapshot(run_dir):
    """The solver state with the highest iteration in the run's snapshot folder."""
    states = [(int(match.group(1)), path) for path in (Path(run_dir) / SNAPSHOT_DIR).glob("*.solverstate")
              if (match := SNAPSHOT_NAME.search(path.name))]
    if not states:
        raise CaffegenError(f"nothing to resume: no .solverstate in {SNAPSHOT_DIR}/", run_dir)
    return max(states)[1]


def earlier_records(run_dir, upto):
    """The records of train.log before iteration ``upto``, where a resumed run takes over."""
    log = run_dir / "train.log"
    if not log.is_file():
        return []
    with log.open(encoding="utf-8", errors="replace") as lines:
        watcher, _ = parse_log(lines)
    return [record for record in watcher.records if record["iteration"] < upto]


@contextmanager
def built_beside(target):
    """A fresh directory beside ``target`` that replaces it when the block ends well, and vanishes if not."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        os.chmod(staging, 0o755)
        old = target.with_name(f".{target.name}.old")
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.rename(target, old)
        os.rename(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
