"""Running the real Caffe binary from tests, and reading what it wrote."""

import os
import re
import subprocess
import threading
import time
from pathlib import Path

import numpy as np

from caffegen.io.prototxt import to_text
from caffegen.io.schema import BVLC
from caffegen.net.netview import TRAIN
from caffegen.net.shapes import format_shape

READY = "Network initialization done."


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


def caffe_top_shapes(caffe, workdir, net, phase=TRAIN):
    """{layer name: [top shapes]} as real Caffe logs them while building ``net`` in ``phase``."""
    (workdir / "net.prototxt").write_text(to_text(constant_fillers(net)))
    process = subprocess.Popen([str(caffe), "time", "-model", "net.prototxt", "-phase", phase, "-iterations", "1"],
                               cwd=workdir, env=dict(os.environ, GLOG_logtostderr="1"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(120, process.kill)
    watchdog.start()
    shapes, layer, log = {}, None, []
    try:
        for line in process.stderr:
            log.append(line)
            if READY in line:
                break
            setting_up = re.search(r"\] Setting up (.+)$", line)
            top = re.search(r"\] Top shape: ([\d ]*)\(\d+\)$", line)
            if setting_up:
                layer = setting_up.group(1)
                shapes[layer] = []
            elif top:
                shapes[layer].append(tuple(int(dim) for dim in top.group(1).split()))
    finally:
        watchdog.cancel()
        process.kill()
        process.wait()
    assert log and READY in log[-1], "".join(log[-30:])
    return shapes


def constant_fillers(net):
    """A copy of ``net`` whose weights Caffe fills with zeros, which is quicker than random numbers."""
    quick = BVLC.NetParameter()
    quick.CopyFrom(net)
    for layer in quick.layer:
        for name in ("convolution_param", "inner_product_param", "embed_param"):
            if layer.HasField(name):
                getattr(layer, name).weight_filler.CopyFrom(BVLC.FillerParameter(type="constant"))
    return quick


def assert_same_shapes(ours, theirs):
    for result in ours:
        assert result.name in theirs, f"Caffe did not build layer '{result.name}'"
        assert list(result.tops.values()) == theirs[result.name], (
            f"layer '{result.name}' ({result.type}): caffegen {list(map(format_shape, result.tops.values()))}, "
            f"Caffe {list(map(format_shape, theirs[result.name]))}")
    inserted = {name for name in theirs if name.endswith("_split")}
    assert set(theirs) - inserted == {result.name for result in ours}


def started_address_space(caffe, *args, cwd):
    """The virtual memory ``caffe args`` reaches until it ends in ``cwd``, plus 64 MiB: Caffe runs within it."""
    process = subprocess.Popen([str(caffe), *map(str, args)], cwd=cwd, env=dict(os.environ, GLOG_logtostderr="1"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak, deadline = 0, time.monotonic() + 120
    while process.poll() is None:
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise AssertionError(f"caffe {' '.join(map(str, args))} did not end within 120 s")
        try:
            found = re.search(r"VmPeak:\s+(\d+) kB", Path(f"/proc/{process.pid}/status").read_text())
        except OSError:  # it has just ended
            found = None
        peak = max(peak, int(found[1]) * 1024 if found else 0)
        time.sleep(0.01)
    return peak + (64 << 20)
