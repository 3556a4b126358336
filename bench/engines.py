"""Benchmark: the engines side by side on ResNet-50's trunk (through pool5) at 224×224, in one run on this machine.

The bench writes random weights for the zoo's ResNet-50 deploy net (He-scaled filters, BatchNorm
with positive variances) and N JPEGs of 256×256, which every engine reads as a cached job's
ImageData layer does (resized to 224×224, mean 104/117/123), and computes pool5's features of
every image with each engine: Caffe's ``extract_features``, OpenCV DNN, ONNX Runtime and OpenVINO,
each on the net as published and with its BatchNorms folded (what ``--fold-bn`` gives). The
configurations take turns, round-robin over a few rounds of N/rounds images, the first of a round
one place later each round, so that a machine whose speed drifts favours none. As in an
extraction, Caffe starts one process per round (an extraction: per chunk) and every other engine
loads its session once, before the rounds. Beside them, ``caffe time -phase TEST`` gives Caffe's
own forward speed on the trunk at batches 1, 2, 4 and 8, before and after the extractions
(averaged). Each engine's features of the first round, from the published net and from the folded one,
are compared with Caffe's from the published net, relative to their scale.

Usage: python bench/engines.py [--images 2000] [--rounds 3] [--dir FOLDER]
(run it on an idle machine: every figure is a speed)
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from cache_scale import write_images  # noqa: E402
from caffe_weights import write_random_weights  # noqa: E402
from zoo_corpus import corpus_folder  # noqa: E402

from caffegen.defaults import CACHE_BATCH  # noqa: E402
from caffegen.errors import CaffegenError  # noqa: E402
from caffegen.io.caffemodel import read_caffemodel, write_caffemodel  # noqa: E402
from caffegen.io.featuredb import read_feature_db  # noqa: E402
from caffegen.io.prototxt import read_net, to_text  # noqa: E402
from caffegen.io.schema import BVLC  # noqa: E402
from caffegen.net.foldbn import fold_batch_norms  # noqa: E402
from caffegen.net.singleassign import single_assignment  # noqa: E402
from caffegen.run.cache.engine_checked import engine_trunk  # noqa: E402
from caffegen.run.engines.agreement import compare_features  # noqa: E402
from caffegen.run.engines.caffe import run_extract_features  # noqa: E402
from caffegen.run.engines.imagedata import caffe_input  # noqa: E402
from caffegen.run.install import install_caffe  # noqa: E402
from caffegen.run.target import Target  # noqa: E402

RESNET = "resnet/ResNet-50-deploy.prototxt"
INPUT, BOUNDARY, MEAN = 224, "pool5", (104.0, 117.0, 123.0)
CAFFE, OTHERS = "caffe", ("opencv", "onnxruntime", "openvino")
TIME_BATCHES = (1, 2, 4, 8)
TIMED_IMAGES = 24  # images each `caffe time` figure is measured over


def trunk_net(deploy, source):
    """ImageData (``source``'s images resized to INPUT², the mean subtracted) and ``deploy``'s layers up to BOUNDARY."""
    net = BVLC.NetParameter(name=f"{deploy.name}_trunk")
    data = net.layer.add(name="data", type="ImageData", top=["data", "label"])
    data.image_data_param.source, data.image_data_param.batch_size = str(source), CACHE_BATCH
    data.image_data_param.new_height = data.image_data_param.new_width = INPUT
    data.transform_param.mean_value.extend(MEAN)
    layers = [layer for layer in deploy.layer if layer.type != "Input"]
    net.layer.extend(layers[:[layer.name for layer in layers].index(BOUNDARY) + 1])
    return net


def folded(deploy, weights, folder):
    """(``deploy`` with its BatchNorms folded, its weights' path in ``folder``), as ``--fold-bn`` folds them."""
    folding = fold_batch_norms(single_assignment(deploy), read_caffemodel(weights))
    path = folder / "folded.caffemodel"
    write_caffemodel(path, folding.weights, deploy.name)
    print(f"folded {len(folding.folded)} BatchNorm ({len(folding.kept)} kept)")
    return folding.net, path


def caffe_time(caffe, deploy, folder, batch):
    """Images a second of ``caffe time -phase TEST`` on ``deploy`` up to BOUNDARY at ``batch``."""
    net = type(deploy)()
    net.CopyFrom(deploy)
    del net.layer[[layer.name for layer in net.layer].index(BOUNDARY) + 1:]
    net.input_dim[0] = batch  # the published net states its input in the legacy input_dim fields
    path = folder / f"time_{batch}.prototxt"
    path.write_text(to_text(net))
    iterations = str(max(3, TIMED_IMAGES // batch))
    done = subprocess.run([str(caffe), "time", "-model", str(path), "-phase", "TEST", "-iterations", iterations],
                          capture_output=True, text=True, env=dict(os.environ, GLOG_logtostderr="1"))
    if done.returncode != 0:
        sys.exit(done.stderr[-2000:])
    return batch / float(re.search(r"Average Forward pass: ([0-9.]+) ms", done.stderr).group(1)) * 1000


class CaffeConfiguration:
    """Caffe's ``extract_features`` on one trunk: one process per round, as an extraction runs one per chunk."""

    def __init__(self, target, deploy, weights, folder):
        self.target, self.deploy, self.weights, self.folder = target, deploy, weights, folder
        folder.mkdir(parents=True)

    def features(self, paths, keep):
        """The seconds pool5's features of ``paths`` took, and the features when ``keep``."""
        source = self.folder / "round.txt"
        source.write_text("".join(f"{path} 0\n" for path in paths))
        started = time.perf_counter()
        databases = run_extract_features(self.target, trunk_net(self.deploy, source), self.weights, [BOUNDARY],
                                         len(paths), CACHE_BATCH, self.folder)
        seconds = time.perf_counter() - started
        found = read_feature_db(databases[BOUNDARY], len(paths)) if keep else None
        shutil.rmtree(databases[BOUNDARY])
        return seconds, found


class EngineConfiguration:
    """Another engine's session on one trunk, loaded once and warmed up on one mini-batch before the rounds."""

    def __init__(self, name, deploy, weights, folder, warm_up):
        folder.mkdir(parents=True)
        net = trunk_net(deploy, folder / "unused.txt")
        self.data = net.layer[0]
        self.trunk = engine_trunk(name, net, BOUNDARY, (1, 3, INPUT, INPUT), weights, folder)
        self.features(warm_up, False)

    def features(self, paths, keep):
        """The seconds pool5's features of ``paths`` took (read, preprocessed, computed), and them when ``keep``."""
        started = time.perf_counter()
        found = np.concatenate([
            self.trunk.session.forward(self.trunk.input_blob, caffe_input(self.data, paths[start:start + CACHE_BATCH],
                                                                          "."), self.trunk.output)
            for start in range(0, len(paths), CACHE_BATCH)])
        return time.perf_counter() - started, found if keep else None


def configurations(target, trunks, folder, warm_up):
    """{(engine, folded): configuration} of every engine installed here, on each of ``trunks`` {folded: (net,
    weights)}; an engine that cannot run is named with why."""
    found = {}
    for is_folded, (deploy, weights) in trunks.items():
        tag = "folded" if is_folded else "published"
        found[CAFFE, is_folded] = CaffeConfiguration(target, deploy, weights, folder / f"caffe_{tag}")
        for name in OTHERS:
            try:
                found[name, is_folded] = EngineConfiguration(name, deploy, weights, folder / f"{name}_{tag}", warm_up)
            except CaffegenError as error:
                print(f"{name} ({tag}) not measured: {error.message}")
    return found


def measured(configured, paths, rounds):
    """({configuration key: images a second}, {key: features of the first round}), taking turns round-robin."""
    seconds, first = dict.fromkeys(configured, 0.0), {}
    keys = list(configured)
    for index, chunk in enumerate(np.array_split(np.array(paths, dtype=object), rounds)):
        for key in keys[index % len(keys):] + keys[:index % len(keys)]:
            taken, features = configured[key].features(list(chunk), index == 0)
            seconds[key] += taken
            if features is not None:
                first[key] = features
        print(f"round {index + 1}/{rounds}: {len(chunk)} images, each configuration")
    return {key: len(paths) / taken for key, taken in seconds.items()}, first


def table(rates, first, best_time):
    """The lines of the figures: each engine's img/s, its ratios to Caffe's, folded, the gain and its agreement."""
    lines = [f"{'engine':12} {'img/s':>8} {'× caffe':>8} {'× caffe time':>13} {'folded img/s':>13} "
             f"{'fold-bn gain':>13} {'max |Δ| / scale':>16} {'folded':>8}"]
    for name in (CAFFE,) + OTHERS:
        if (name, False) not in rates:
            continue
        rate, folded_rate = rates[name, False], rates.get((name, True))
        differences = [compare_features(name, first[CAFFE, False], first[name, is_folded]).max_difference
                       if (name, is_folded) in first else float("nan") for is_folded in (False, True)]
        gained = f"{folded_rate / rate:.2f}×" if folded_rate else "-"
        lines.append(f"{name:12} {rate:8.1f} {rate / rates[CAFFE, False]:7.2f}× {rate / best_time:12.2f}× "
                     f"{folded_rate or 0:13.1f} {gained:>13} {differences[0]:16.1e} {differences[1]:8.1e}")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path)
    args = parser.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="caffegen-bench-engines-"))
    work.mkdir(parents=True, exist_ok=True)
    caffe = install_caffe(log=print)
    deploy = read_net(corpus_folder() / RESNET).net
    weights = write_random_weights(deploy, work / "resnet50.caffemodel")
    write_images(work / "images", args.images)
    paths = sorted((work / "images").rglob("*.jpg"))
    trunks = {False: (deploy, weights), True: folded(deploy, weights, work)}
    before = {batch: caffe_time(caffe, deploy, work, batch) for batch in TIME_BATCHES}
    rates, first = measured(configurations(Target(caffe), trunks, work / "engines", paths[:CACHE_BATCH]), paths,
                            args.rounds)
    after = {batch: caffe_time(caffe, deploy, work, batch) for batch in TIME_BATCHES}
    timed = {batch: (before[batch] + after[batch]) / 2 for batch in TIME_BATCHES}
    best = max(timed, key=timed.get)
    print(f"ResNet-50 through {BOUNDARY} at {INPUT}×{INPUT}, {args.images} images in {args.rounds} rounds, "
          f"mini-batch {CACHE_BATCH}, on {os.cpu_count()} CPU cores")
    print("caffe time: " + ", ".join(f"batch {batch} {rate:.1f}" for batch, rate in timed.items())
          + f" img/s (best: batch {best}, averaged before and after)")
    for line in table(rates, first, timed[best]):
        print(line)


if __name__ == "__main__":
    main()
