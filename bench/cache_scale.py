"""Benchmark: feature extraction at real scale, on the zoo's ResNet-50 at its native 224×224 input.

Caffe-initialised weights (zero iterations of ``caffe train``) are fine for speed and memory.
The bench draws JPEGs of five classes at 256×256, prepares cached jobs frozen through pool5
(the deploy net gains data layers, mean 104/117/123, images resized to 224×224), and runs the
extraction on SMALL and on LARGE training images with each engine (Caffe's ``extract_features``,
OpenCV DNN with its first mini-batch checked against Caffe), each in a fresh process, so that
each peak RSS is its own. Beside them, in the same run, ``caffe time -phase TEST`` measures
Caffe's own forward speed at a few batch sizes.

Usage: python bench/cache_scale.py [--dir FOLDER] [--small 500] [--large 2000]
"""

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cache_features import caffe_initialised  # noqa: E402

from caffegen.io.prototxt import read_net, to_text  # noqa: E402
from caffegen.job.cacheplan import plan_cache  # noqa: E402
from caffegen.job.prepare import JobOptions, prepare  # noqa: E402
from caffegen.net.wiring import DataSettings  # noqa: E402
from caffegen.run import cache  # noqa: E402
from caffegen.run.install import install_caffe  # noqa: E402
from caffegen.run.target import Target  # noqa: E402

RESNET = ROOT.parent / "shared" / "fixtures" / "zoo" / "resnet" / "ResNet-50-deploy.prototxt"
SIDE, INPUT, CLASSES, VAL = 256, 224, 5, 0.05
TIME_BATCHES = (1, 8, 16)
ENGINES = ("caffe", "opencv")


def write_images(folder, count, seed=5):
    """``count`` JPEGs in CLASSES folders: a class hue with noise."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        label = index % CLASSES
        (folder / f"c{label}").mkdir(parents=True, exist_ok=True)
        hue = np.array([40 + 40 * label, 200 - 30 * label, 120], np.float32)
        pixels = np.clip(hue + rng.normal(0, 40, (SIDE, SIDE, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"c{label}" / f"{index:05d}.jpg", quality=85)


def caffe_time(caffe, folder, batch):
    """Images per second of Caffe's own forward pass of ResNet-50 at ``batch``."""
    net = read_net(RESNET).net
    net.input_dim[0] = batch  # the published net states its input in the legacy input_dim fields
    path = folder / f"time_{batch}.prototxt"
    path.write_text(to_text(net))
    done = subprocess.run([str(caffe), "time", "-model", str(path), "-phase", "TEST", "-iterations", "3"],
                          capture_output=True, text=True, env=dict(os.environ, GLOG_logtostderr="1"))
    forward = float(re.search(r"Average Forward pass: ([0-9.]+) ms", done.stderr).group(1))
    return batch / forward * 1000


def extract_once(caffe, weights, images, run_dir, engine):
    """In this process: prepare the cached job and extract its features with ``engine``; print JSON of the figures.

    The peak RSS is the larger of Caffe's processes' and this one's (OpenCV DNN runs in it).
    """
    settings = DataSettings(resize=(INPUT, INPUT), mean_value=(104.0, 117.0, 123.0))
    prepare(JobOptions(net=RESNET, weights=weights, data=images, val_fraction=VAL, freeze_upto="pool5",
                       cache_features=True, data_settings=settings, engine=engine), run_dir)
    plan = plan_cache(run_dir)
    started = time.monotonic()
    store, _ = cache.extract(plan, Target(Path(caffe)), echo=lambda line: print(line, file=sys.stderr),
                             show_progress=False)
    seconds = time.monotonic() - started
    peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_CHILDREN, resource.RUSAGE_SELF)) * 1024
    print(json.dumps({"images": sum(plan.images.values()), "seconds": seconds, "peak_rss": peak,
                      "engine": store.engine}))


def measured_extraction(caffe, weights, images, run_dir, engine):
    done = subprocess.run([sys.executable, __file__, "--extract-only", str(caffe), str(weights), str(images),
                           str(run_dir), engine], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--small", type=int, default=500)
    parser.add_argument("--large", type=int, default=2000)
    parser.add_argument("--extract-only", nargs=5, metavar=("CAFFE", "WEIGHTS", "IMAGES", "RUN", "ENGINE"))
    args = parser.parse_args()
    if args.extract_only:
        return extract_once(*args.extract_only)
    work = args.dir or Path(tempfile.mkdtemp(prefix="caffegen-bench-"))
    caffe = install_caffe(log=print)
    weights = caffe_initialised(caffe, RESNET.read_text(), work / "init")
    results = {}
    for count in (args.small, args.large):
        images = work / f"images_{count}"
        write_images(images, round(count / (1 - VAL)))
        for engine in ENGINES:
            results[count, engine] = figures = measured_extraction(caffe, weights, images, work / f"run_{count}_{engine}",
                                                                   engine)
            print(f"{figures['images']} images with {figures['engine']}: "
                  f"{figures['images'] / figures['seconds']:.1f} img/s, peak RSS {figures['peak_rss'] / 1e9:.2f} GB")
    timed = {batch: caffe_time(caffe, work, batch) for batch in TIME_BATCHES}
    print("caffe time -phase TEST: " + ", ".join(f"batch {b}: {rate:.1f} img/s" for b, rate in timed.items()))
    rates = {engine: results[args.large, engine]["images"] / results[args.large, engine]["seconds"]
             for engine in ENGINES}
    for engine in ENGINES:
        small, large = results[args.small, engine], results[args.large, engine]
        print(f"extraction with {engine}: {rates[engine]:.1f} img/s ({rates[engine] / max(timed.values()):.2f}× "
              f"caffe time), peak RSS {small['peak_rss'] / 1e9:.2f} GB at {args.small} and "
              f"{large['peak_rss'] / 1e9:.2f} GB at {args.large} images (mini-batches of {cache.CACHE_BATCH})")
    print(f"opencv {rates['opencv'] / rates['caffe']:.2f}× caffe ({args.large} images, ResNet-50 at {INPUT}×{INPUT})")

if __name__ == "__main__":
    main()
