"""Benchmark: training CaffeNet's classifier on cached trunk features, against the normal job.

The trunk is BVLC's reference CaffeNet from the zoo at its native 227×227 input, frozen through
fc7, so only the retargeted fc8 learns. Its weights are initialised by Caffe itself (its xavier
filler, run for zero iterations, which snapshots the initial net), since no trained weights can be
downloaded. The images are coloured shapes, one shape and hue per class, drawn at random places and
sizes as 256×256 PNGs and resized to 227×227 by Caffe.

A one-time cache needs a deterministic trunk, so the net is made so for both jobs alike: the TRAIN
data layer loses its random crop and mirror, and the Dropout between fc6 and fc7 is removed (drop7
stays: it follows the last frozen layer and runs in the head either way). Two run directories are
prepared alike, then timed side by side: ``caffegen launch`` of one, ``run_cached`` of the other.

Usage: python bench/cache_features.py [--dir FOLDER] [--train 500] [--val 100] [--epochs 20]
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from zoo_corpus import corpus_folder  # noqa: E402

from caffegen.io.prototxt import read_net, to_text  # noqa: E402
from caffegen.io.schema import BVLC  # noqa: E402
from caffegen.job.cacheplan import plan_cache  # noqa: E402
from caffegen.job.prepare import JobOptions, prepare  # noqa: E402
from caffegen.job.rundir import RunDir  # noqa: E402
from caffegen.net.layers import DATA_TYPES  # noqa: E402
from caffegen.net.wiring import DataSettings  # noqa: E402
from caffegen.run.cache import run_cached  # noqa: E402
from caffegen.run.install import install_caffe  # noqa: E402
from caffegen.run.launch import launch  # noqa: E402
from caffegen.run.runner import validation_accuracies  # noqa: E402
from caffegen.run.target import Target  # noqa: E402

CAFFENET = "bvlc_reference_caffenet/train_val.prototxt"
SIDE, INPUT = 256, 227
MEAN = (104.0, 117.0, 123.0)
BATCH = 50
# The untrained trunk's fc7 outputs are large (mean about 5 over 4096 values): fine-tuning's usual 0.001 diverges.
BASE_LR = 1e-5
# (shape, RGB) of each class.
CLASSES = [("disk", (220, 40, 40)), ("square", (40, 180, 60)), ("triangle", (50, 80, 220)),
           ("ring", (230, 200, 40)), ("cross", (200, 60, 200))]


def write_images(folder, per_class, seed=7):
    """``per_class`` PNGs of each class: its shape in its hue (jittered) on a noisy background."""
    rng = np.random.default_rng(seed)
    for label, (shape, colour) in enumerate(CLASSES):
        (folder / shape).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            background = rng.integers(60, 160, (SIDE, SIDE, 3), dtype=np.uint8)
            image = Image.fromarray(background)
            hue = tuple(int(np.clip(channel + rng.integers(-30, 31), 0, 255)) for channel in colour)
            draw_shape(ImageDraw.Draw(image), shape, hue, rng)
            image.save(folder / shape / f"{index:04d}.png")


def draw_shape(draw, shape, colour, rng):
    size = int(rng.integers(50, 120))
    x, y = (int(value) for value in rng.integers(size, SIDE - size, 2))
    box = [x - size, y - size, x + size, y + size]
    if shape == "disk":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(x, y - size), (x - size, y + size), (x + size, y + size)], fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(8, size // 4))
    else:
        draw.rectangle([x - size, y - size // 4, x + size, y + size // 4], fill=colour)
        draw.rectangle([x - size // 4, y - size, x + size // 4, y + size], fill=colour)


def deterministic_caffenet(path):
    """CaffeNet's train_val without the random crop, mirror and fc6's Dropout; xavier fillers for the weights."""
    net = read_net(corpus_folder() / CAFFENET).net
    kept = [layer for layer in net.layer if layer.name != "drop6"]
    del net.layer[:]
    net.layer.extend(kept)
    for layer in net.layer:
        if layer.type in DATA_TYPES:
            layer.transform_param.ClearField("crop_size")
            layer.transform_param.ClearField("mirror")
        for param in (layer.convolution_param, layer.inner_product_param):
            if param.HasField("weight_filler"):
                param.weight_filler.Clear()
                param.weight_filler.type = "xavier"
    path.write_text(to_text(net))
    return net


def initial_weights(caffe, net, folder):
    """Caffe's own initialisation of ``net``: zero iterations of ``caffe train``, which still snapshots."""
    init = BVLC.NetParameter(name=net.name)
    init.layer.add(name="data", type="Input", top=["data"]).input_param.shape.add(dim=[1, 3, INPUT, INPUT])
    init.layer.extend(layer for layer in net.layer if layer.type not in DATA_TYPES and "label" not in layer.bottom)
    return caffe_initialised(caffe, to_text(init), folder)


def caffe_initialised(caffe, net_text, folder):
    """The weights Caffe initialises the deploy net ``net_text`` with, snapshot after zero iterations in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "init.prototxt").write_text(net_text)
    (folder / "solver.prototxt").write_text('net: "init.prototxt"\nbase_lr: 0\nlr_policy: "fixed"\nmax_iter: 0\n'
                                            'snapshot_prefix: "init"\nsolver_mode: CPU\nrandom_seed: 3\n')
    done = subprocess.run([str(caffe), "train", "-solver", "solver.prototxt"], cwd=folder, capture_output=True,
                          text=True, env=dict(os.environ, GLOG_logtostderr="1"))
    weights = folder / "init_iter_0.caffemodel"
    if done.returncode != 0 or not weights.is_file():
        sys.exit(f"caffe could not initialise the weights:\n{done.stderr[-2000:]}")
    return weights


def prepare_run(net_path, weights, images, run_dir, epochs, val_fraction):
    settings = DataSettings(batch_size=BATCH, val_batch_size=BATCH, resize=(INPUT, INPUT), mean_value=MEAN)
    prepare(JobOptions(net=net_path, weights=weights, data=images, val_fraction=val_fraction, freeze_upto="fc7",
                       epochs=epochs, snapshot_every=epochs, data_settings=settings, base_lr=BASE_LR), run_dir)
    return run_dir


def last_accuracy(records):
    accuracies = validation_accuracies(records)
    return accuracies[-1][1] if accuracies else math.nan


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--train", type=int, default=500, help="training images (default 500)")
    parser.add_argument("--val", type=int, default=200, help="validation images (default 200)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs (default 20)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cache-bench-") as scratch:
        work = args.dir or Path(scratch)
        run(work, args.train, args.val, args.epochs)


def run(work, train, val, epochs):
    caffe = install_caffe(log=lambda line: None)
    per_class = (train + val) // len(CLASSES)
    write_images(work / "images", per_class)
    net_path = work / "caffenet_deterministic.prototxt"
    weights = initial_weights(caffe, deterministic_caffenet(net_path), work / "init")
    runs = {kind: prepare_run(net_path, weights, work / "images", work / kind, epochs, val / (train + val))
            for kind in ("uncached", "cached")}
    plan = plan_cache(runs["cached"])
    print(f"net: CaffeNet {INPUT}×{INPUT}, frozen through fc7; {plan.images['train']} training and "
          f"{plan.images['val']} validation images, {epochs} epochs, batch {BATCH}, {os.cpu_count()} cores")
    print(plan.describe())

    started = time.monotonic()
    uncached = launch(runs["uncached"], Target(caffe))
    uncached_seconds = time.monotonic() - started
    started = time.monotonic()
    cached = run_cached(RunDir(runs["cached"]), Target(caffe))
    cached_seconds = time.monotonic() - started
    if uncached.exit_code or cached.exit_code:
        sys.exit(f"a run failed: uncached exit {uncached.exit_code}, cached exit {cached.exit_code}")
    parts = json.loads((runs["cached"] / "result.json").read_text())["cache"]
    report(uncached_seconds, cached_seconds, parts, last_accuracy(uncached.records), last_accuracy(cached.records),
           plan)


def report(uncached_seconds, cached_seconds, parts, uncached_accuracy, cached_accuracy, plan):
    extract, train = parts["extract_seconds"], parts["train_seconds"]
    images = sum(plan.images.values())
    print(f"uncached: caffegen launch {uncached_seconds:.1f} s, validation accuracy {100 * uncached_accuracy:.1f} %")
    print(f"cached: run_cached {cached_seconds:.1f} s, validation accuracy {100 * cached_accuracy:.1f} %")
    print(f"  trunk forward over {images} images: {extract:.1f} s ({1000 * extract / images:.0f} ms per image)")
    print(f"  head training: {train:.1f} s")
    print(f"  the rest (plan, merge into final.caffemodel, curves): {cached_seconds - extract - train:.1f} s")
    speedup = uncached_seconds / cached_seconds
    delta = 100 * (cached_accuracy - uncached_accuracy)
    limit = cached_seconds / (extract + train)
    print(f"speedup: {speedup:.1f}×, accuracy delta: {delta:+.1f} pt, vs limit: {limit:.2f}×")


if __name__ == "__main__":
    main()
