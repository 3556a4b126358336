"""Benchmark: caffegen's memory estimate against the peak resident memory of the real Caffe 1.0.

Each zoo net's deploy definition becomes a train_val net as ``caffegen prepare`` makes one (ImageData
on a list of random JPEGs at the net's input size, a loss, an accuracy), with zero weights written
from its learnable blobs' shapes. Caffe then runs what caffegen runs:

- ``test``: ``caffe test`` of the TEST net for one batch (validation on its own);
- ``train``: ``caffe train`` of the TRAIN net alone, one iteration and the final snapshot;
- ``train+test``: the same with the TEST net tested before the first iteration, as ``caffegen
  launch`` trains (``test_iter`` and the default ``test_initialization``);
- ``extract``: ``caffe test`` of the trunk below the classifier writing its output with HDF5Output,
  loading only the trunk's weights, as ``--cache-features`` extracts.

The peak is Caffe's ``ru_maxrss``, from a small fresh interpreter that starts it and reads
``RUSAGE_CHILDREN``.
The table gives net, command, batch, estimated and measured peaks and the error of the estimate.

Usage: python bench/memory_estimate.py [--dir FOLDER] [--nets caffenet,googlenet,...] [--batches 2,8]
       [--commands test,train,train+test,extract]
"""

import argparse
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from zoo_corpus import corpus_folder  # noqa: E402

from caffegen.io.caffemodel import read_caffemodel, write_caffemodel  # noqa: E402
from caffegen.io.prototxt import read_net, to_text  # noqa: E402
from caffegen.io.schema import BVLC  # noqa: E402
from caffegen.io.tables import text_table  # noqa: E402
from caffegen.net.classaxis import find_classifiers  # noqa: E402
from caffegen.net.memory import (  # noqa: E402
    extraction_memory,
    format_bytes,
    testing_memory,
    training_memory,
    weights_copy,
    with_batch,
)
from caffegen.net.netview import TEST, TRAIN, NetView  # noqa: E402
from caffegen.net.shapes import infer_shapes  # noqa: E402
from caffegen.net.wiring import DataSettings, add_training_layers  # noqa: E402
from caffegen.run.install import install_caffe  # noqa: E402

NETS = {
    "caffenet": "bvlc_reference_caffenet/deploy.prototxt",
    "googlenet": "bvlc_googlenet/deploy.prototxt",
    "resnet50": "resnet/ResNet-50-deploy.prototxt",
    "squeezenet": "squeezenet_v1.1/deploy.prototxt",
    "mobilenet": "mobilenet/mobilenet_deploy.prototxt",
}
COMMANDS = ("test", "train", "train+test", "extract")
TRAIN_SOLVER = ('net: "train_val.prototxt"\n{tests}base_lr: 0.0001\nmomentum: 0.9\nlr_policy: "fixed"\n'
                'max_iter: 1\ndisplay: 1\nsnapshot_prefix: "snapshot"\nsolver_mode: CPU\ntype: "SGD"\n')


@dataclass
class Row:
    """One measurement: what ran, caffegen's estimate and the real peak, in bytes."""

    net: str
    command: str
    batch: int
    estimated: int
    measured: int

    @property
    def error(self):
        """The estimate's error, in percent of the measured peak."""
        return 100 * (self.estimated - self.measured) / self.measured


# Runs Caffe and prints its exit code and peak RSS in kB. A child's peak starts at its parent's (Linux keeps the
# high-water mark across exec), so Caffe is started by this small fresh interpreter, not by the big one measuring.
MEASURE = ("import resource, subprocess, sys\n"
           "code = subprocess.call(sys.argv[1:], stdout=sys.stderr)\n"
           "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def peak_rss(caffe, args, cwd):
    """Run ``caffe args`` in ``cwd``; return its peak resident memory in bytes, refusing a failed run."""
    env = dict(os.environ, GLOG_logtostderr="1")
    with open(Path(cwd) / "caffe.log", "w") as log:
        done = subprocess.run([sys.executable, "-I", "-S", "-c", MEASURE, str(caffe), *map(str, args)], cwd=cwd,
                              env=env, stdout=subprocess.PIPE, stderr=log, text=True, check=True)
    code, kilobytes = map(int, done.stdout.split())
    if code != 0:
        tail = (Path(cwd) / "caffe.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"caffe {' '.join(args)} failed in {cwd} ({code}):\n{tail}")
    return kilobytes * 1024


def train_val(deploy_path):
    """The zoo deploy net as a train_val net: ImageData on list.txt for both phases, a loss and an accuracy."""
    net = read_net(deploy_path).net
    add_training_layers(net, DataSettings())
    for layer in net.layer:
        if layer.type == "ImageData":
            layer.image_data_param.source = "list.txt"
    return net


def write_weights(net, phase, path, layers=None):
    """Zero weights for the learnable blobs of ``net`` in ``phase`` (of ``layers`` only, when given)."""
    blobs = [(BVLC.LayerParameter(name=result.name, type=result.type),
              [np.zeros(shape, np.float32) for shape in result.params])
             for result in infer_shapes(NetView(net, phase)) if result.params
             and (layers is None or result.name in layers)]
    write_caffemodel(path, blobs)


def write_images(folder, size, count):
    """``count`` random JPEGs of size×size in ``folder``; return their list, labels 0 and 1."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for number in range(count):
        path = folder / f"{number}.jpg"
        if not path.exists():
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, quality=90)
        lines.append(f"{path} {number % 2}\n")
    return "".join(lines)


def trunk(net):
    """(TEST layers below the classifier, the blob the classifier reads) of ``net``: what a cache extracts."""
    view = NetView(net, TEST)
    classifier = find_classifiers(net)[0]
    boundary = view.layer(classifier).bottom[0]
    source = view.sources(classifier)[0]
    below = view.ancestors(source) | {source}
    return [layer for layer in view.layers if layer.name in below], boundary


def measure_net(caffe, name, batches, commands, folder):
    """The rows of net ``name`` at each batch for each command, run in ``folder``."""
    base = train_val(corpus_folder() / NETS[name])
    folder.mkdir(parents=True, exist_ok=True)
    write_weights(base, TRAIN, folder / "weights.caffemodel")
    copy = weights_copy(read_caffemodel(folder / "weights.caffemodel"))
    size = next(layer for layer in base.layer if layer.type == "ImageData").transform_param.crop_size
    rows = []
    for batch in batches:
        net = with_batch(with_batch(base, TRAIN, batch), TEST, batch)
        (folder / "list.txt").write_text(write_images(folder / "images", size, 2 * batch))
        (folder / "train_val.prototxt").write_text(to_text(net))
        for command in commands:
            estimate, measured = _run(caffe, command, net, copy, folder)
            rows.append(Row(name, command, batch, estimate.peak, measured))
    return rows


def _run(caffe, command, net, copy, folder):
    """(caffegen's ProcessMemory, Caffe's measured peak) of one command on ``net``."""
    if command == "test":
        args = ["test", "-model", "train_val.prototxt", "-weights", "weights.caffemodel", "-iterations", "1"]
        return testing_memory(net, weights_copy=copy), peak_rss(caffe, args, folder)
    if command in ("train", "train+test"):
        tests = "test_iter: 1\ntest_interval: 1000\n" if command == "train+test" else ""
        (folder / "solver.prototxt").write_text(TRAIN_SOLVER.format(tests=tests))
        estimated = training_memory(net if tests else _train_phase_only(net), "SGD", weights_copy=copy)
        return estimated, peak_rss(caffe, ["train", "-solver", "solver.prototxt", "-weights", "weights.caffemodel"],
                                   folder)
    layers, boundary = trunk(net)
    extractor = BVLC.NetParameter(name="trunk")
    extractor.layer.extend(layers)
    extractor.layer.add(name="cache", type="HDF5Output", bottom=[boundary, "label"]).hdf5_output_param.file_name = \
        "features.h5"
    (folder / "features.h5").unlink(missing_ok=True)
    (folder / "trunk.prototxt").write_text(to_text(extractor))
    write_weights(net, TEST, folder / "trunk.caffemodel", {layer.name for layer in layers})
    args = ["test", "-model", "trunk.prototxt", "-weights", "trunk.caffemodel", "-iterations", "1"]
    return extraction_memory(layers, (boundary, "label"), None), peak_rss(caffe, args, folder)


def _train_phase_only(net):
    """``net`` without its TEST-phase layers: what ``caffe train`` builds when the solver never tests."""
    copy = BVLC.NetParameter()
    copy.CopyFrom(net)
    del copy.layer[:]
    copy.layer.extend(NetView(net, TRAIN).layers)
    return copy


def table(rows):
    """The rows as the error table, with the largest error at the end."""
    lines = text_table(("net", "command", "batch", "estimated", "measured", "error"),
                       [(row.net, row.command, row.batch, format_bytes(row.estimated), format_bytes(row.measured),
                         f"{row.error:+.1f} %") for row in rows])
    worst = max(rows, key=lambda row: abs(row.error))
    return lines + [f"largest error: {worst.error:+.1f} % ({worst.net} {worst.command} at batch {worst.batch})"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="working folder (default: a temporary one)")
    parser.add_argument("--nets", default=",".join(NETS))
    parser.add_argument("--batches", default="2,8")
    parser.add_argument("--commands", default=",".join(COMMANDS))
    args = parser.parse_args()
    caffe = install_caffe(log=lambda line: None)
    folder = args.dir or Path(tempfile.mkdtemp(prefix="caffegen-memory-"))
    batches = [int(batch) for batch in args.batches.split(",")]
    rows = []
    for name in args.nets.split(","):
        rows += measure_net(caffe, name, batches, args.commands.split(","), folder / name)
    print("\n".join(table(rows)))


if __name__ == "__main__":
    main()
