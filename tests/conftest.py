"""Shared fixtures: the zoo of published nets, the real Caffe binary, the real command line, a real Slurm.

Tests that need an outside program get its marker from the fixture that provides it (``caffe``,
``slurm``, ``wine``), and tests that read the published nets are marked ``zoo``; so
``pytest -m "not caffe and not slurm and not wine"`` runs every pure test. Under ``CI`` none of them
may be skipped for want of what it needs.
"""

import contextlib
import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from served import serving
from slurm_cluster import APT_PACKAGES, SlurmCluster, missing_programs
from zoo_corpus import locate_corpus, manifest_remotes

ROOT = Path(__file__).resolve().parents[1]
IN_CI = bool(os.environ.get("CI"))
CORPUS = locate_corpus()
ZOO = CORPUS.folder
# Markers that the fixture of the same name applies to every test using it.
FIXTURE_MARKERS = ("caffe", "slurm", "wine", "zoo")

# Zoo files that are not BVLC nets, with the words their error must contain.
NOT_BVLC_NETS = {
    "densenet/DenseNet_121.prototxt": "ceil_mode",
    "ssd_mobilenet/MobileNetSSD_deploy.prototxt": "permute_param",
    "ssd_mobilenet/MobileNetSSD_train.prototxt": "resize_param",
    "ssd_mobilenet/MobileNetSSD_test.prototxt": "resize_param",
    "ssd_labelmap/labelmap_voc.prototxt": "label map",
}


def _bundled_models():
    from caffegen.io.resources import resource_dir
    return resource_dir("models")


# The bundled digits model: train_val.prototxt and digits.caffemodel, trained on the digits 0 to 4.
DIGITS = _bundled_models() / "digits"


def zoo_files():
    """Relative paths of the corpus's prototxt files, from its manifest (so collection never needs the corpus)."""
    return sorted(remote.name for remote in manifest_remotes() if remote.name.endswith(".prototxt"))


def zoo_cases(select, arity=1):
    """The parameters ``select()`` reads from the corpus; where the corpus is absent, one case that skips."""
    if CORPUS.found:
        return select()
    return [pytest.param(*[None] * arity, marks=pytest.mark.skip(reason=CORPUS.skip_reason), id="no-zoo-corpus")]


def is_solver(name):
    return "solver" in Path(name).name


def zoo_nets():
    """Relative paths of the zoo files that are BVLC nets."""
    return [name for name in zoo_files() if not is_solver(name) and name not in NOT_BVLC_NETS]


@pytest.fixture(scope="session")
def zoo():
    """The folder of the published nets (see ``zoo_corpus.py``); a test using it skips where it is absent."""
    if not CORPUS.found:
        pytest.skip(CORPUS.skip_reason)
    return CORPUS.folder


@pytest.fixture(scope="session")
def caffe():
    """Path of a real Caffe 1.0 binary, installed into the user prefix when missing."""
    from caffegen.errors import CaffegenError
    from caffegen.run.install import install_caffe
    try:
        return install_caffe(log=lambda line: None)
    except CaffegenError as error:
        if os.environ.get("CI"):
            pytest.fail(f"real Caffe is required in CI: {error}")
        pytest.skip(f"real Caffe unavailable: {error}")


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """Real images: scikit-learn's digits 5–9, a task the bundled model (trained on 0–4) never saw; read only."""
    from caffegen.strategies.digits import write_digit_images
    folder = tmp_path_factory.mktemp("digits")
    write_digit_images(folder, range(5, 10))
    return folder


@pytest.fixture(scope="session")
def trained_digits(caffe, images, tmp_path_factory):
    """The digits job (the bundled model to the digits 5–9, trunk frozen up to conv2, 2 epochs), prepared and
    trained once per session: tests read a copy of it (``copy_run``), which names its own files."""
    run = tmp_path_factory.mktemp("trained") / "run"
    prepared = run_caffegen("prepare", "--gpu", "cpu", "--net", DIGITS / "train_val.prototxt", "--weights",
                            DIGITS / "digits.caffemodel", "--data", images, "--freeze-upto", "conv2", "--epochs", 2,
                            "-o", run)
    assert prepared.returncode == 0, prepared.stderr
    launched = run_caffegen("launch", run)
    assert launched.returncode == 0, launched.stderr
    return run


def copy_run(run, folder):
    """A copy of the run directory ``run`` in ``folder`` (cp -r, as a user copies one)."""
    return Path(shutil.copytree(run, Path(folder) / run.name, symlinks=True))


def run_caffegen(*args, cwd=None, env=None, input=None):
    """Run the command line in this process, as ``caffegen ARGS`` would run: its exit code and its output.

    It runs in ``cwd`` with exactly the environment ``env`` (default: this one) and ``input`` on
    standard input; all three are restored after. Tests that need signals, a real exit status or an
    interpreter of their own use ``run_caffegen_process``.
    """
    from caffegen.cli import main
    streams = {name: io.TextIOWrapper(io.BytesIO(), encoding="utf-8", newline="")
               for name in ("stdout", "stderr")}
    stdin = io.TextIOWrapper(io.BytesIO((input or "").encode()), encoding="utf-8")
    with _swapped_streams(stdin, **streams), _environment(env), _working_folder(cwd):
        try:
            code = main([str(arg) for arg in args])
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
    output = {}
    for name, stream in streams.items():
        stream.flush()
        output[name] = stream.buffer.getvalue().decode()
    return subprocess.CompletedProcess(["caffegen", *map(str, args)], code, output["stdout"], output["stderr"])


def run_caffegen_process(*args, cwd=None, env=None, input=None):
    """Run the real command line in a process of its own, as a user would."""
    return subprocess.run([sys.executable, "-m", "caffegen", *map(str, args)], cwd=cwd, env=env,
                          input=input, capture_output=True, text=True)


@contextlib.contextmanager
def _swapped_streams(stdin, stdout, stderr):
    saved = sys.stdin, sys.stdout, sys.stderr
    sys.stdin, sys.stdout, sys.stderr = stdin, stdout, stderr
    try:
        yield
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved


@contextlib.contextmanager
def _environment(env):
    saved = dict(os.environ)
    if env is not None:
        os.environ.clear()
        os.environ.update({name: str(value) for name, value in env.items()})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def _working_folder(cwd):
    saved = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(saved)


def wait_for(condition, what, timeout=60, every=0.1):
    """Poll ``condition()`` until it is true; fail naming ``what`` when ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def gpu_caffe(folder):
    """A stand-in for a Caffe built with CUDA: it lists GPU 0 to ``device_query`` (and does nothing else)."""
    folder.mkdir(parents=True, exist_ok=True)
    caffe = folder / "caffe"
    caffe.write_text('#!/bin/sh\nif [ "$1" = device_query ]; then echo "I1206 00:00:00.0 1 common.cpp:178] '
                     'Device id: 0"; exit 0; fi\nexit 1\n')
    caffe.chmod(0o755)
    return caffe


def assert_one_line_error(result, *words):
    """The command failed as a user error: exit code 2, one line on stderr with ``words``, no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0]


@pytest.fixture
def cli():
    return run_caffegen


@pytest.fixture
def server():
    """A local HTTP server (see ``served.py``)."""
    with serving() as served:
        yield served


@pytest.fixture
def small_disk(tmp_path):
    """mount(name, kilobytes, read_only=False): a tmpfs of that size under ``tmp_path``, a real full (or
    read-only) file system, unmounted after the test; the test skips where this machine allows no mount."""
    mounted = []

    def mount(name, kilobytes, read_only=False):
        folder = tmp_path / name
        folder.mkdir()
        options = f"size={kilobytes}k" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                              text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): needs root")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A real Slurm (munged, slurmctld, slurmd) on localhost for this session; required in CI."""
    missing = missing_programs()
    if missing:
        reason = f"Slurm is not installed (no {', '.join(missing)}); apt-get install {' '.join(APT_PACKAGES)}"
        if os.environ.get("CI"):
            pytest.fail(f"a real Slurm is required in CI: {reason}")
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def pytest_configure(config):
    if IN_CI and not CORPUS.found:
        raise pytest.UsageError(f"the zoo corpus is required in CI: {CORPUS.skip_reason} ({CORPUS.how})")


def pytest_report_header(config):
    return f"zoo corpus: {CORPUS.how}" + ("" if CORPUS.found else f"; {CORPUS.skip_reason}")


def pytest_collection_modifyitems(config, items):
    skip_zoo = pytest.mark.skip(reason=CORPUS.skip_reason)
    for item in items:
        for name in FIXTURE_MARKERS:
            if name in item.fixturenames:
                item.add_marker(name)
        if not CORPUS.found and item.get_closest_marker("zoo"):
            item.add_marker(skip_zoo)
