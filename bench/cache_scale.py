"""Benchmark: feature extraction at real scale, on the zoo's ResNet-50 at its native 224×224 input.

Caffe-initialised weights (zero iterations of ``caffe train``) are fine for speed and memory.
The bench draws JPEGs of five classes at 256×256, prepares cached jobs frozen through pool5
(the deploy net gains data layers, mean 104/117/123, images resized to 224×224, a new 5-class
classifier, the default schedule), and runs each on SMALL and on LARGE training images with
``--engine caffe`` (Caffe's ``extract_features``) and with the default ``auto`` (OpenCV DNN where
it agrees with Caffe on the first mini-batch), each in a fresh process, so that each peak RSS is
its own. Beside them, in the same run, ``caffe time -phase TEST`` measures Caffe's own forward
speed on the same trunk at a few batch sizes, before and after the extractions (the two are
averaged, so that a machine whose speed drifts does not favour either side), beside OpenCV DNN's
forward pass alone (on the trunk and on ResNet-50 at half width, a net of about 1 G multiply-adds
per image), and a few iterations of the uncached job, scaled to its schedule, give the time the
cache saves.

Usage: python bench/cache_scale.py [--dir FOLDER] [--small 500] [--large 2000]
(run it on an idle machine: every figure is a speed)
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
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from cache_features import caffe_initialised  # noqa: E402
from zoo_corpus import corpus_folder  # noqa: E402

from caffegen.io.prototxt import read_net, read_solver, to_text  # noqa: E402
from caffegen.job.cacheplan import plan_cache  # noqa: E402
from caffegen.job.prepare import JobOptions, prepare  # noqa: E402
from caffegen.job.rundir import RunDir  # noqa: E402
from caffegen.net.netview import TEST, TRAIN, NetView  # noqa: E402
from caffegen.net.wiring import DataSettings  # noqa: E402
from caffegen.reporting import PlainReporter  # noqa: E402
from caffegen.run.cache import run_cached  # noqa: E402
from caffegen.run.install import install_caffe  # noqa: E402
from caffegen.run.target import Target  # noqa: E402

RESNET = "resnet/ResNet-50-deploy.prototxt"
SIDE, INPUT, CLASSES, VAL = 256, 224, 5, 0.05
BOUNDARY = "pool5"
TIME_BATCHES = (1, 2, 4, 8)
# Images each forward-speed figure is measured over.
TIMED_IMAGES = 160
# The engine caffegen uses unless told, and the one it checks against.
DEFAULT = "auto"
ENGINES = ("caffe", DEFAULT)
# The uncached job's iteration time: LONG iterations against SHORT ones, so that start-up cancels out.
SHORT, LONG = 2, 22


def write_images(folder, count, seed=5):
    """``count`` JPEGs in CLASSES folders: a class hue with noise."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        label = index % CLASSES
        (folder / f"c{label}").mkdir(parents=True, exist_ok=True)
        hue = np.array([40 + 40 * label, 200 - 30 * label, 120], np.float32)
        pixels = np.clip(hue + rng.normal(0, 40, (SIDE, SIDE, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"c{label}" / f"{index:05d}.jpg", quality=85)


def caffe_time(caffe, net, folder, batch):
    """Images per second of Caffe's own forward pass of ``net`` (a deploy NetParameter) at ``batch``, over about
    TIMED_IMAGES images."""
    net = copied(net)
    net.input_dim[0] = batch  # the published net states its input in the legacy input_dim fields
    path = folder / f"time_{net.name}_{batch}.prototxt"
    path.write_text(to_text(net))
    iterations = str(max(3, TIMED_IMAGES // batch))
    done = subprocess.run([str(caffe), "time", "-model", str(path), "-phase", "TEST", "-iterations", iterations],
                          capture_output=True, text=True, env=dict(os.environ, GLOG_logtostderr="1"))
    forward = float(re.search(r"Average Forward pass: ([0-9.]+) ms", done.stderr).group(1))
    return batch / forward * 1000


def opencv_time(net, weights, folder, batch):
    """Images per second of OpenCV DNN's forward pass of ``net`` with ``weights`` at ``batch``, after one warm-up."""
    import cv2

    path = folder / f"opencv_{net.name}.prototxt"
    path.write_text(to_text(net))
    dnn = cv2.dnn.readNetFromCaffe(str(path), str(weights))
    blob = np.random.default_rng(0).uniform(-100, 100, (batch, 3, INPUT, INPUT)).astype(np.float32)
    dnn.setInput(blob)
    dnn.forward()
    rounds = max(1, TIMED_IMAGES // batch)
    started = time.monotonic()
    for _ in range(rounds):
        dnn.setInput(blob)
        dnn.forward()
    return rounds * batch / (time.monotonic() - started)


def copied(net):
    copy = type(net)()
    copy.CopyFrom(net)
    return copy


def half_width(net):
    """``net`` with half the channels in every convolution: ResNet-50's shape at about a quarter of its work."""
    half = copied(net)
    half.name = f"{net.name}-half"
    for layer in half.layer:
        if layer.type == "Convolution":
            layer.convolution_param.num_output //= 2
    return half


def trunk(net):
    """``net``'s layers up to BOUNDARY: the trunk the cached jobs extract with."""
    cut = copied(net)
    cut.name = f"{net.name}-{BOUNDARY}"
    del cut.layer[[layer.name for layer in net.layer].index(BOUNDARY) + 1:]
    return cut


def forward_rates(caffe, net, weights, folder):
    """({batch: caffe time img/s}, {batch: OpenCV DNN img/s}) of ``net``'s plain forward pass, side by side."""
    return ({batch: caffe_time(caffe, net, folder, batch) for batch in TIME_BATCHES},
            {batch: opencv_time(net, weights, folder, batch) for batch in TIME_BATCHES})


def averaged(*rounds):
    """{batch: mean img/s} of several rounds of {batch: img/s}."""
    return {batch: sum(rates[batch] for rates in rounds) / len(rounds) for batch in rounds[0]}


def speeds_line(name, caffe_rates, opencv_rates):
    """(best caffe time img/s, a line of both engines' rates by batch and their ratio at their best batches)."""
    best = max(caffe_rates.values())
    words = ", ".join(f"batch {batch}: caffe {caffe_rates[batch]:.1f}, opencv {opencv_rates[batch]:.1f} img/s"
                      for batch in TIME_BATCHES)
    return best, f"forward pass alone, {name} ({words}): OpenCV DNN {max(opencv_rates.values()) / best:.2f}× caffe time"


def cached_once(caffe, weights, images, run_dir, engine):
    """In this process: prepare the cached job and run it with ``engine``; print JSON of the figures.

    The peak RSS is the largest of Caffe's processes' and this one's (OpenCV DNN runs in it); the
    head's ``caffe train`` on the features is far smaller than the extraction.
    """
    run_dir = Path(run_dir)
    prepare(job_options(weights, images, cache_features=True, engine=engine), run_dir)
    run = RunDir(run_dir)
    lines = []
    result = run_cached(run, Target(Path(caffe)), PlainReporter(lines.append))
    if result.exit_code != 0:
        sys.exit("\n".join(lines[-20:]))
    cache = json.loads((run_dir / "result.json").read_text())["cache"]
    peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_CHILDREN, resource.RUSAGE_SELF)) * 1024
    batch = next(line for line in lines if line.startswith("feature extraction in mini-batches"))
    print(json.dumps({"images": sum(plan_cache(run).images.values()), "seconds": cache["extract_seconds"],
                      "head_seconds": cache["train_seconds"], "peak_rss": peak, "engine": cache["engine"],
                      "batch": batch}))


def job_options(weights, images, **options):
    """The bench's job: ResNet-50 frozen through pool5, a new 5-class classifier, the default schedule."""
    settings = DataSettings(resize=(INPUT, INPUT), mean_value=(104.0, 117.0, 123.0))
    return JobOptions(net=corpus_folder() / RESNET, weights=weights, data=images, val_fraction=VAL,
                      freeze_upto=BOUNDARY, data_settings=settings, **options)


def measured_run(caffe, weights, images, run_dir, engine):
    done = subprocess.run([sys.executable, __file__, "--cached-only", str(caffe), str(weights), str(images),
                           str(run_dir), engine], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def uncached_seconds(caffe, weights, images, run_dir):
    """(seconds, words): the uncached job's time to a trained head, from a few timed iterations scaled to its schedule.

    Two short ``caffe train`` runs of the prepared job, SHORT and LONG iterations without tests or
    snapshots, give the time of one iteration free of start-up; each test pass of the schedule is
    counted as that time per image, for as many images (a TEST forward costs what a TRAIN one does,
    since the frozen trunk does no backward pass).
    """
    prepare(job_options(weights, images), run_dir)
    solver = read_solver(run_dir / "solver.prototxt")
    net = read_net(run_dir / "train_val.prototxt").net
    batch, val_batch = (NetView(net, phase).layers[0].image_data_param.batch_size for phase in (TRAIN, TEST))
    timed = {}
    for iterations in (SHORT, LONG):
        short = type(solver)()
        short.CopyFrom(solver)
        short.max_iter, short.test_interval, short.test_initialization = iterations, iterations + 1, False
        short.snapshot, short.snapshot_after_train = 0, False
        (run_dir / f"solver_{iterations}.prototxt").write_text(to_text(short))
        started = time.monotonic()
        done = subprocess.run([str(caffe), "train", "-solver", f"solver_{iterations}.prototxt",
                               "-weights", str(RunDir(run_dir).weights())], cwd=run_dir, capture_output=True,
                              text=True, env=dict(os.environ, GLOG_logtostderr="1"))
        if done.returncode != 0:
            sys.exit(done.stderr[-3000:])
        timed[iterations] = time.monotonic() - started
    per_image = (timed[LONG] - timed[SHORT]) / (LONG - SHORT) / batch
    tests = solver.max_iter // solver.test_interval if solver.test_interval else 0
    seconds = per_image * (solver.max_iter * batch + tests * sum(solver.test_iter) * val_batch)
    words = (f"uncached: {per_image * 1000:.0f} ms per image over {LONG - SHORT} timed iterations of batch {batch}, "
             f"scaled to the schedule's {solver.max_iter} iterations and {tests} test passes: {seconds:.0f} s")
    return seconds, words


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--small", type=int, default=500)
    parser.add_argument("--large", type=int, default=2000)
    parser.add_argument("--cached-only", nargs=5, metavar=("CAFFE", "WEIGHTS", "IMAGES", "RUN", "ENGINE"))
    args = parser.parse_args()
    if args.cached_only:
        return cached_once(*args.cached_only)
    work = args.dir or Path(tempfile.mkdtemp(prefix="caffegen-bench-"))
    caffe = install_caffe(log=print)
    weights = caffe_initialised(caffe, (corpus_folder() / RESNET).read_text(), work / "init")
    resnet = read_net(corpus_folder() / RESNET).net
    resnet_trunk = trunk(resnet)
    before = forward_rates(caffe, resnet_trunk, weights, work)
    results = {}
    for count in (args.small, args.large):
        images = work / f"images_{count}"
        write_images(images, round(count / (1 - VAL)))
        for engine in ENGINES:
            results[count, engine] = figures = measured_run(caffe, weights, images, work / f"run_{count}_{engine}",
                                                            engine)
            print(f"--engine {engine}: {figures['images']} images with {figures['engine']}: "
                  f"{figures['images'] / figures['seconds']:.1f} img/s, peak RSS {figures['peak_rss'] / 1e9:.2f} GB, "
                  f"{figures['batch']}; head training {figures['head_seconds']:.1f} s")
    after = forward_rates(caffe, resnet_trunk, weights, work)
    best, line = speeds_line(f"ResNet-50 through {BOUNDARY}, over {TIMED_IMAGES} images before and after the "
                             "extractions, averaged", *(averaged(*rounds) for rounds in zip(before, after)))
    print(line)
    half = half_width(resnet)
    half_weights = caffe_initialised(caffe, to_text(half), work / "init_half")
    print(speeds_line("ResNet-50 at half width", *forward_rates(caffe, half, half_weights, work))[1])
    uncached, words = uncached_seconds(caffe, weights, work / f"images_{args.large}", work / "run_uncached")
    print(words)
    large = {engine: results[args.large, engine] for engine in ENGINES}
    rate = {engine: figures["images"] / figures["seconds"] for engine, figures in large.items()}
    cached = large[DEFAULT]["seconds"] + large[DEFAULT]["head_seconds"]
    print(f"cached (--engine {DEFAULT}): extraction {large[DEFAULT]['seconds']:.0f} s + head training "
          f"{large[DEFAULT]['head_seconds']:.0f} s = {cached:.0f} s")
    peak = {count: max(results[count, engine]["peak_rss"] for engine in ENGINES) / 1e9
            for count in (args.small, args.large)}
    print(f"extraction: {rate[DEFAULT]:.1f} img/s (caffe engine {rate['caffe'] / best:.2f}× caffe time, "
          f"{large[DEFAULT]['engine']} {rate[DEFAULT] / rate['caffe']:.2f}× caffe), peak RSS {peak[args.small]:.2f} GB "
          f"at {args.small} and {peak[args.large]:.2f} GB at {args.large} images, speedup {uncached / cached:.1f}×")


if __name__ == "__main__":
    main()
