"""Find the Caffe binary to run, and tell whether it is a CPU-only build."""

import functools
import os
import resource
import shutil
import subprocess
from pathlib import Path

from caffegen.errors import CaffegenError, CaffeNotFound
from caffegen.run.install import default_prefix

CPU_ONLY_MESSAGE = "Cannot use GPU in CPU-only Caffe"


def find_caffe(explicit=None):
    """Return the Caffe binary to run.

    Search order: `explicit` (a --caffe argument), $CAFFE_BIN,
    $CAFFE_ROOT/build/tools/caffe, `caffe` on PATH, then the `bin/caffe`
    wrapper of the default install prefix.  `explicit` and $CAFFE_BIN name
    the binary exactly, so they must exist and be executable; the later
    steps are skipped when they find nothing.  Raises CaffeNotFound listing
    what was searched.
    """
    if explicit is not None:
        return _required(Path(explicit), "--caffe")
    if os.environ.get("CAFFE_BIN"):
        return _required(Path(os.environ["CAFFE_BIN"]), "CAFFE_BIN")
    searched = ["$CAFFE_BIN (not set)"]
    for description, candidate in _search_steps():
        if candidate is not None and _is_executable(candidate):
            return candidate.absolute()
        searched.append(description)
    raise CaffeNotFound(
        "no Caffe binary found (searched: " + "; ".join(searched) + "): "
        "run `caffegen install-caffe`, or pass --caffe PATH or set CAFFE_BIN"
    )


def ask_caffe_version(caffe):
    """Start asking ``caffe`` its version (``caffe --version``), beside whatever runs meanwhile; the function
    returned waits for the answer: such as ``1.0.0``, or None where it gives none."""
    try:
        asked = subprocess.Popen([str(caffe), "--version"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 text=True, errors="replace", env=dict(os.environ, GLOG_logtostderr="1"))
    except OSError:
        return lambda: None

    def answer():
        try:
            said, _ = asked.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            asked.kill()
            asked.communicate()
            return None
        words = said.strip().rpartition("caffe version ")
        return words[2].split()[0] if words[1] and words[2].strip() else None
    return answer


def caffe_is_cpu_only(caffe):
    """Whether `caffe` is a CPU_ONLY build; the answer is cached per path for this process."""
    return _cpu_only(str(Path(caffe).absolute()))


def _required(path, source):
    if not path.exists():
        raise CaffeNotFound(f"{source} {path}: no such file")
    if not _is_executable(path):
        raise CaffeNotFound(f"{source} {path}: not an executable file")
    return path.absolute()


def _is_executable(path):
    return path.is_file() and os.access(path, os.X_OK)


def _search_steps():
    """(description, candidate path or None) for each search step after $CAFFE_BIN."""
    caffe_root = os.environ.get("CAFFE_ROOT")
    if caffe_root:
        yield f"$CAFFE_ROOT/build/tools/caffe ({caffe_root})", Path(caffe_root) / "build" / "tools" / "caffe"
    else:
        yield "$CAFFE_ROOT (not set)", None
    on_path = shutil.which("caffe")
    yield "caffe on PATH", Path(on_path) if on_path else None
    wrapper = default_prefix() / "bin" / "caffe"
    yield f"{wrapper}", wrapper


@functools.lru_cache(maxsize=None)
def _cpu_only(caffe):
    # A CPU_ONLY build aborts `device_query` with a fixed message before touching
    # any device; a CUDA build either lists the GPU or fails with a CUDA error.
    # GLOG_logtostderr keeps glog from leaving log files in /tmp.
    try:
        result = subprocess.run(
            [caffe, "device_query", "-gpu", "0"],
            env=dict(os.environ, GLOG_logtostderr="1"),
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=_disable_core_dumps,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise CaffegenError(f"cannot run {caffe} device_query: {error}") from None
    return CPU_ONLY_MESSAGE in result.stdout + result.stderr


def _disable_core_dumps():
    # The CPU_ONLY answer is an abort(); it should not leave a core file behind.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
