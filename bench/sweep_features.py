"""Benchmark: a cached sweep computes each trunk's features once, against a sweep whose runs each compute their own.

CaffeNet from the zoo at its native 227×227 input, made deterministic as in ``cache_features.py``
(no random crop or mirror, no Dropout between fc6 and fc7), with weights from Caffe's own
initialisation. The sweep is 2 freeze points (fc6, fc7) × 3 learning rates with
``--cache-features``, on coloured-shape images made here. Both sweeps are prepared alike and run
here one run after another, side by side in this process: the shared one keeps one feature store
per trunk (and computes fc7's from fc6's), the unshared one a store per run.

Usage: python bench/sweep_features.py [--dir FOLDER] [--images 2000] [--epochs 2]
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from cache_features import BATCH, CLASSES, INPUT, MEAN, deterministic_caffenet, initial_weights, write_images

from caffegen.job.prepare import JobOptions
from caffegen.net.wiring import DataSettings
from caffegen.reporting import PlainReporter
from caffegen.run.install import install_caffe
from caffegen.run.target import Target
from caffegen.strategies.sweep import combinations, prepare_sweep, run_here

FREEZE_POINTS = ("fc6", "fc7")
LEARNING_RATES = (1e-5, 5e-6, 2e-6)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--images", type=int, default=2000,
                        help="images, a fifth of them for validation (default 2000)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each head training (default 2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as scratch:
        run(args.dir or Path(scratch), args.images, args.epochs)


def run(work, images, epochs):
    caffe = install_caffe(log=lambda line: None)
    write_images(work / "images", images // len(CLASSES))
    net_path = work / "caffenet_deterministic.prototxt"
    weights = initial_weights(caffe, deterministic_caffenet(net_path), work / "init")
    settings = DataSettings(batch_size=BATCH, val_batch_size=BATCH, resize=(INPUT, INPUT), mean_value=MEAN)
    options = JobOptions(net=net_path, weights=weights, data=work / "images", val_fraction=0.2, epochs=epochs,
                         snapshot_every=epochs, data_settings=settings, cache_features=True)
    planned = combinations(options, FREEZE_POINTS, (), LEARNING_RATES)
    print(f"net: CaffeNet {INPUT}×{INPUT}; sweep: freeze up to {', '.join(FREEZE_POINTS)} × base_lr "
          f"{', '.join(f'{lr:g}' for lr in LEARNING_RATES)}, {images} images, {epochs} epochs, {os.cpu_count()} cores")
    figures = {}
    for kind, share in (("shared", True), ("unshared", False)):
        sweep_dir = work / kind
        runs = prepare_sweep(planned, sweep_dir, share_features=share)
        lines = []
        started = time.monotonic()
        errors = run_here(sweep_dir, runs, Target(caffe), PlainReporter(lines.append))
        seconds = time.monotonic() - started
        if errors:
            sys.exit(f"{kind} sweep: {errors}")
        caches = [json.loads((sweep_dir / entry.run_dir / "result.json").read_text())["cache"] for entry in runs]
        computed = [cache for cache in caches if not cache["reused"]]
        extract = sum(cache["extract_seconds"] for cache in caches)
        derived = sum(line.startswith("deriving ") for line in lines)
        figures[kind] = seconds
        print(f"{kind}: {seconds:.1f} s for {len(runs)} runs; features computed {len(computed)} times "
              f"({derived} derived from a shallower trunk's), reused {len(caches) - len(computed)} times; "
              f"extraction {extract:.1f} s in all")
        for line in lines:
            if line.startswith(("deriving ", "not deriving ")):
                print(f"  {line}")
    print(f"sweep: shared {figures['shared']:.1f} s, unshared {figures['unshared']:.1f} s, "
          f"speedup {figures['unshared'] / figures['shared']:.1f}×")


if __name__ == "__main__":
    main()
