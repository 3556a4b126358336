"""Running the real Caffe binary from tests, and reading what it wrote."""

import os
import re
import subprocess
import time
from pathlib import Path

import numpy as np

from caffegen.io.schema import BVLC


def run_caffe(caffe, *args, cwd):
    """Run ``caffe`` with ``args`` in ``cwd``; return (return code, log)."""
    env = dict(os.environ, GLOG_logtostderr="1")
    result = subprocess.run([str(caffe), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True)
    return result.returncode, result.stdout + result.stderr


def train(caffe, workdir, net_text, max_iter=20, weights=None, base_lr=0.05, prefix="snap"):
    """Train ``net_text`` with a plain SGD solver on CPU; return (final caffemodel, log)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "net.prototxt").write_text(net_text)
    (workdir / "solver.prototxt").write_text(
        f'net: "net.prototxt"\nbase_lr: {base_lr}\nlr_policy: "fixed"\nmomentum: 0.9\n'
        f'max_iter: {max_iter}\ndisplay: 1\nsolver_mode: CPU\nrandom_seed: 7\nsnapshot_prefix: "{prefix}"\n')
    args = ["train", "-solver", "solver.prototxt"] + (["-weights", weights] if weights else [])
    code, log = run_caffe(caffe, *args, cwd=workdir)
    assert code == 0, log[-3000:]
    model = workdir / f"{prefix}_iter_{max_iter}.caffemodel"
    assert model.exists(), log[-3000:]
    return model, log


def read_blobs(caffemodel):
    """{layer name: [numpy array per blob]} of a caffemodel."""
    net = BVLC.NetParameter.FromString(Path(caffemodel).read_bytes())
    return {layer.name: [np.array(blob.data, dtype=np.float32).reshape(list(blob.shape.dim) or [-1])
                         for blob in layer.blobs]
            for layer in net.layer if layer.blobs}


def layers_without_backward(log):
    """Names of the layers Caffe reports as not needing backward computation."""
    marker = " does not need backward computation."
    return {line.split("] ", 1)[-1][: -len(marker)] for line in log.splitlines() if line.endswith(marker)}


def started_address_space(caffe, *args, cwd):
    """The virtual memory ``caffe args`` reaches in its first second in ``cwd``, plus 64 MiB: Caffe starts within it."""
    process = subprocess.Popen([str(caffe), *map(str, args)], cwd=cwd, env=dict(os.environ, GLOG_logtostderr="1"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak, started = 0, time.monotonic()
    while process.poll() is None and time.monotonic() - started < 1:
        try:
            found = re.search(r"VmPeak:\s+(\d+) kB", Path(f"/proc/{process.pid}/status").read_text())
        except OSError:  # it has just ended
            found = None
        peak = max(peak, int(found[1]) * 1024 if found else 0)
        time.sleep(0.01)
    process.kill()
    process.wait()
    return peak + (64 << 20)
