"""Benchmark: how long the whole ``caffegen`` process takes to start and do a small job, against the goals.

Each command runs as a user runs it, a fresh process each time, and the median of several runs is
kept:

* ``caffegen --help`` (goal: at most 0.3 s);
* ``caffegen freeze --upto res5c`` on the zoo's ResNet-152 deploy net (goal: at most 0.3 s);
* ``caffegen inspect`` of a VGG16 deploy net with a VGG16-sized caffemodel (138 million float32
  values, about 553 MB, written here), against a process that parses the same file fully with
  protobuf (goal: at least 5× faster).

Usage: python bench/startup.py [--runs N] [--dir FOLDER]
"""

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from caffemodel_read import generate, vgg16_layers  # noqa: E402
from zoo_corpus import corpus_folder  # noqa: E402

CAFFEGEN = [sys.executable, "-m", "caffegen"]
FULL_PARSE = ("import sys; from caffegen.io.schema import BVLC; "
              "BVLC.NetParameter.FromString(open(sys.argv[1], 'rb').read())")
GOAL_SECONDS = 0.3
GOAL_SPEEDUP = 5


def median_seconds(command, runs):
    """The median wall time of ``runs`` fresh processes of ``command``, which must succeed (exit 0 or 1)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        times.append(time.perf_counter() - start)
        if done.returncode not in (0, 1):
            sys.exit(f"{' '.join(map(str, command))} failed: {done.stderr.strip()}")
    return statistics.median(times)


def vgg16_deploy(path):
    """Write VGG16's deploy net (224×224 input), whose layers and blob shapes are the caffemodel's."""
    lines = ['name: "VGG_ILSVRC_16_layers"',
             'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 224 dim: 224 } } }']
    bottom = "data"
    for name, layer_type, shapes in vgg16_layers():
        if layer_type == "Convolution":
            body = f"convolution_param {{ num_output: {shapes[0][0]} kernel_size: 3 pad: 1 }}"
        elif layer_type == "InnerProduct":
            body = f"inner_product_param {{ num_output: {shapes[0][0]} }}"
        elif layer_type == "Pooling":
            body = "pooling_param { pool: MAX kernel_size: 2 stride: 2 }"
        else:
            body = ""
        top = bottom if layer_type in ("ReLU", "Dropout") else name
        lines.append(f'layer {{ name: "{name}" type: "{layer_type}" bottom: "{bottom}" top: "{top}" {body} }}')
        bottom = top
    path.write_text("\n".join(lines) + "\n")
    return path


def verdict(met):
    return "met" if met else "MISSED"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="processes per figure (default: 7)")
    parser.add_argument("--dir", type=Path, help="where to write the caffemodel (default: a temporary folder)")
    args = parser.parse_args()
    resnet = corpus_folder() / "resnet" / "ResNet-152-deploy.prototxt"
    help_s = median_seconds([*CAFFEGEN, "--help"], args.runs)
    print(f"caffegen --help: {help_s:.3f} s (goal <= {GOAL_SECONDS} s: {verdict(help_s <= GOAL_SECONDS)})")
    freeze_s = median_seconds([*CAFFEGEN, "freeze", "--upto", "res5c", resnet], args.runs)
    print(f"caffegen freeze --upto res5c ResNet-152-deploy.prototxt: {freeze_s:.3f} s "
          f"(goal <= {GOAL_SECONDS} s: {verdict(freeze_s <= GOAL_SECONDS)})")
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        weights, net = Path(folder) / "vgg16.caffemodel", vgg16_deploy(Path(folder) / "vgg16.prototxt")
        generate(weights)
        size = weights.stat().st_size
        inspect_s = median_seconds([*CAFFEGEN, "inspect", net, "--weights", weights], args.runs)
        parse_s = median_seconds([sys.executable, "-c", FULL_PARSE, weights], max(3, args.runs // 2))
    speedup = parse_s / inspect_s
    print(f"caffegen inspect with a {size / 1e6:.0f} MB caffemodel: {inspect_s:.3f} s; a process parsing it fully "
          f"with protobuf: {parse_s:.3f} s; {speedup:.1f}× faster (goal >= {GOAL_SPEEDUP}×: "
          f"{verdict(speedup >= GOAL_SPEEDUP)})")
    print(f"startup: --help {help_s:.2f} s, freeze {freeze_s:.2f} s, inspect --weights {speedup:.1f}× a full parse")


if __name__ == "__main__":
    main()
