"""Shared fixtures: the zoo of published nets, the real Caffe binary, the real command line, a real Slurm."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from slurm_cluster import APT_PACKAGES, SlurmCluster, missing_programs

ROOT = Path(__file__).resolve().parents[1]
ZOO = ROOT.parent / "shared" / "fixtures" / "zoo"

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
    return sorted(path.relative_to(ZOO).as_posix() for path in ZOO.rglob("*.prototxt"))


def is_solver(name):
    return "solver" in Path(name).name


def zoo_nets():
    """Relative paths of the zoo files that are BVLC nets."""
    return [name for name in zoo_files() if not is_solver(name) and name not in NOT_BVLC_NETS]


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


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Real images: scikit-learn's digits 5–9, a task the bundled model (trained on 0–4) never saw."""
    from caffegen.strategies.digits import write_digit_images
    folder = tmp_path_factory.mktemp("digits")
    write_digit_images(folder, range(5, 10))
    return folder


def run_caffegen(*args, cwd=None, env=None, input=None):
    """Run the real command line, as a user would."""
    return subprocess.run([sys.executable, "-m", "caffegen", *map(str, args)], cwd=cwd, env=env,
                          input=input, capture_output=True, text=True)


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
