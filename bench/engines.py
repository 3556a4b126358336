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

Beside them: the machine's own single-precision matrix-multiply rate (numpy, 4096², best of a few),
as the practical limit, with each engine's GFLOP/s (2 × the trunk's multiply-adds × img/s) as a
fraction of it; the cached ResNet-50 job against the uncached one, as ``bench/cache_scale.py``
measures them (``--no-job`` leaves it out); and the ONNX conversion of every zoo net the tests
convert, each checked against real Caffe (``--no-zoo`` leaves it out). The last line sums it up.

Usage: python bench/engines.py [--images 2000] [--rounds 3] [--dir FOLDER] [--no-job] [--no-zoo]
(run it on an idle machine: every figure is a speed)
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from cache_scale import caffe_time, trunk, write_images  # noqa: E402
from caffe_weights import write_random_weights  # noqa: E402
from zoo_corpus import corpus_folder  # noqa: E402

from caffegen.defaults import CACHE_BATCH  # noqa: E402
from caffegen.errors import CaffegenError  # noqa: E402
from caffegen.io.caffemodel import read_caffemodel, write_caffemodel  # noqa: E402
from caffegen.io.featuredb import read_feature_db  # noqa: E402
from caffegen.io.prototxt import read_net  # noqa: E402
from caffegen.io.schema import BVLC  # noqa: E402
from caffegen.net.foldbn import fold_batch_norms  # noqa: E402
from caffegen.net.netview import TEST, NetView  # noqa: E402
from caffegen.net.shapes import infer_shapes  # noqa: E402
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


def matmul_gflops(side=4096, tries=5):
    """The machine's single-precision matrix-multiply rate: numpy's ``side``² product, the best of ``tries``."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((side, side), dtype=np.float32) for _ in range(2))
    best = float("inf")
    for _ in range(tries):
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * side ** 3 / best / 1e9


def trunk_multiply_adds(deploy):
    """The multiply-adds of one image through ``deploy`` up to BOUNDARY, from the inferred shapes."""
    net = trunk(deploy)
    net.input_dim[0] = 1
    return sum(result.multiply_adds or 0 for result in infer_shapes(NetView(net, TEST)))


def cached_job_speedup(caffe, work, images):
    """The uncached ResNet-50 job's time over the cached one's (``auto``), as bench/cache_scale.py measures them."""
    import cache_scale
    from cache_features import caffe_initialised
    weights = caffe_initialised(caffe, (corpus_folder() / RESNET).read_text(), work / "init")
    folder = work / "job_images"
    cache_scale.write_images(folder, round(images / (1 - cache_scale.VAL)))
    figures = cache_scale.measured_run(caffe, weights, folder, work / "run_cached", cache_scale.DEFAULT)
    uncached, words = cache_scale.uncached_seconds(caffe, weights, folder, work / "run_uncached")
    cached = figures["seconds"] + figures["head_seconds"]
    print(f"{words}; cached with {figures['engine']}: {figures['seconds']:.0f} s extraction + "
          f"{figures['head_seconds']:.0f} s head training = {cached:.0f} s")
    return uncached / cached


def zoo_conversions(caffe, work):
    """(nets verified, nets converted, the largest difference, each relative to its tolerance's kind): every zoo net
    of tests/test_onnx_zoo.py converted with random weights and checked against real Caffe."""
    import test_onnx_zoo
    checks = {}
    for name, net, fold_bn, batch in zoo_nets(work):
        folder = work / "zoo" / name.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        checks[name], seconds = test_onnx_zoo.converted(caffe, folder, net, fold_bn, batch)
        print(f"onnx {name}: {seconds:.1f} s, largest difference '{checks[name].worst.blob}' "
              f"{checks[name].worst.words()}")
    verified = sum(all(item.passed for item in check.checks) for check in checks.values())
    return verified, len(checks), max(check.worst.measure for check in checks.values())


def zoo_nets(work):
    """(name, deploy net, --fold-bn, --batch) of each zoo net the tests convert: the list of tests/test_onnx_zoo.py,
    DenseNet-121 through its fork's schema, and MobileNet-SSD up to its box convolutions."""
    import test_onnx_zoo
    from fork_schemas import densenet_for_caffe, ssd_proto

    from caffegen.io.schema import load_fork_schema
    for name, (path, side, fold_bn, batch) in test_onnx_zoo.ZOO_NETS.items():
        yield name, test_onnx_zoo.deploy_of(read_net(corpus_folder() / path).net, side), fold_bn, batch
    (work / "schemas").mkdir(exist_ok=True)
    yield "DenseNet-121 --fold-bn", densenet_for_caffe(work / "schemas"), True, 1
    ssd = read_net(corpus_folder() / "ssd_mobilenet/MobileNetSSD_deploy.prototxt",
                   load_fork_schema(ssd_proto(work / "schemas" / "ssd.proto"))).net
    part = BVLC.NetParameter.FromString(test_onnx_zoo.convertible_part(ssd).SerializeToString())
    yield "MobileNet-SSD up to its boxes", part, False, None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--no-job", action="store_true", help="leave out the cached job against the uncached one")
    parser.add_argument("--no-zoo", action="store_true", help="leave out the ONNX conversions of the zoo")
    args = parser.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="caffegen-bench-engines-"))
    work.mkdir(parents=True, exist_ok=True)
    caffe = install_caffe(log=print)
    deploy = read_net(corpus_folder() / RESNET).net
    weights = write_random_weights(deploy, work / "resnet50.caffemodel")
    write_images(work / "images", args.images)
    paths = sorted((work / "images").rglob("*.jpg"))
    trunks = {False: (deploy, weights), True: folded(deploy, weights, work)}
    before = {batch: caffe_time(caffe, trunk(deploy), work, batch) for batch in TIME_BATCHES}
    rates, first = measured(configurations(Target(caffe), trunks, work / "engines", paths[:CACHE_BATCH]), paths,
                            args.rounds)
    after = {batch: caffe_time(caffe, trunk(deploy), work, batch) for batch in TIME_BATCHES}
    timed = {batch: (before[batch] + after[batch]) / 2 for batch in TIME_BATCHES}
    best = max(timed, key=timed.get)
    print(f"ResNet-50 through {BOUNDARY} at {INPUT}×{INPUT}, {args.images} images in {args.rounds} rounds, "
          f"mini-batch {CACHE_BATCH}, on {os.cpu_count()} CPU cores")
    print("caffe time: " + ", ".join(f"batch {batch} {rate:.1f}" for batch, rate in timed.items())
          + f" img/s (best: batch {best}, averaged before and after)")
    for line in table(rates, first, timed[best]):
        print(line)
    limit, flops = matmul_gflops(), 2 * trunk_multiply_adds(deploy) / 1e9
    print(f"matrix multiply (numpy, 4096², float32): {limit:.0f} GFLOP/s; the trunk: {flops:.2f} GFLOP an image")
    for name in (CAFFE,) + OTHERS:
        if (name, False) in rates:
            print(f"{name}: {rates[name, False] * flops:.0f} GFLOP/s = {rates[name, False] * flops / limit:.0%} of it")
    speedup = None if args.no_job else cached_job_speedup(caffe, work, args.images)
    zoo = None if args.no_zoo else zoo_conversions(caffe, work)
    print(last_line(rates, timed[best], limit, flops, speedup, zoo))


def last_line(rates, best_time, limit, flops, speedup, zoo):
    """``engines: fastest E at X img/s = Y× caffe time (Z% of the matrix-multiply rate); cached job speedup S×;
    onnx verified on N/N zoo nets, largest difference D``."""
    (fastest, _), rate = max(((key, rate) for key, rate in rates.items() if not key[1]), key=lambda item: item[1])
    job = f"cached job speedup {speedup:.1f}×" if speedup else "cached job not measured"
    onnx = (f"onnx verified on {zoo[0]}/{zoo[1]} zoo nets, largest difference {zoo[2]:.1e}" if zoo
            else "zoo conversions not run")
    return (f"engines: fastest {fastest} at {rate:.1f} img/s = {rate / best_time:.2f}× caffe time "
            f"({rate * flops / limit:.0%} of the matrix-multiply rate); {job}; {onnx}")


if __name__ == "__main__":
    main()
