"""Benchmark: list the blob shapes of a VGG16-sized caffemodel, against a full protobuf parse.

Writes a caffemodel with VGG16's layer names and blob shapes (138 million random float32
values, about 550 MB) into a temporary folder, then times, each in a fresh Python process so
that neither the generator's memory nor the other's counts:

* caffegen's reader listing every layer's blob shapes (time and peak resident memory);
* ``NetParameter.ParseFromString`` of the whole file with caffegen's BVLC schema.

Each is run three times and the fastest kept; the file sits in the page cache for both.
Usage: python bench/caffemodel_read.py [--dir FOLDER]
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from caffegen.io.caffemodel import write_caffemodel  # noqa: E402
from caffegen.io.schema import BVLC  # noqa: E402

RUNS = 3
# VGG16 (Simonyan & Zisserman, configuration D): (name, type, blob shapes) in Caffe's layer order.
CONV_STAGES = [(1, 2, 64), (2, 2, 128), (3, 3, 256), (4, 3, 512), (5, 3, 512)]


def vgg16_layers():
    """(name, type, blob shapes) of every layer of VGG16, parameter-free ones included."""
    layers, channels = [], 3
    for stage, convs, width in CONV_STAGES:
        for index in range(1, convs + 1):
            layers.append((f"conv{stage}_{index}", "Convolution", [(width, channels, 3, 3), (width,)]))
            layers.append((f"relu{stage}_{index}", "ReLU", []))
            channels = width
        layers.append((f"pool{stage}", "Pooling", []))
    inputs = channels * 7 * 7
    for name, outputs in (("fc6", 4096), ("fc7", 4096), ("fc8", 1000)):
        layers.append((name, "InnerProduct", [(outputs, inputs), (outputs,)]))
        if name != "fc8":
            layers.append((f"relu{name[2:]}", "ReLU", []))
            layers.append((f"drop{name[2:]}", "Dropout", []))
        inputs = outputs
    layers.append(("prob", "Softmax", []))
    return layers


def generate(path):
    """Write the VGG16-sized caffemodel with random float32 values; return its parameter count."""
    rng = np.random.default_rng(16)

    def layers():
        for name, layer_type, shapes in vgg16_layers():
            layer = BVLC.LayerParameter(name=name, type=layer_type)
            yield layer, [rng.standard_normal(shape, dtype=np.float32) * 0.01 for shape in shapes]

    write_caffemodel(path, layers(), name="VGG_ILSVRC_16_layers")
    return sum(int(np.prod(shape)) for _, _, shapes in vgg16_layers() for shape in shapes)


READER = """
import json, sys, time
from caffegen.io.caffemodel import read_caffemodel
start = time.perf_counter()
model = read_caffemodel(sys.argv[1])
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_kb": PEAK(),
                  "shapes": [[layer.name, [list(blob.shape) for blob in layer.blobs]] for layer in model.layers]}))
"""

FULL_PARSE = """
import json, sys, time
from caffegen.io.schema import BVLC
data = open(sys.argv[1], "rb").read()
start = time.perf_counter()
net = BVLC.NetParameter()
net.ParseFromString(data)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_kb": PEAK(),
                  "shapes": [[layer.name, [list(blob.shape.dim) for blob in layer.blobs]] for layer in net.layer]}))
"""

PEAK = """
def PEAK():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
"""


def measure(script, path):
    """Run ``script`` on ``path`` in fresh processes; the fastest run's figures."""
    runs = []
    for _ in range(RUNS):
        result = subprocess.run([sys.executable, "-c", PEAK + script, str(path)], cwd=ROOT,
                                capture_output=True, text=True, check=True)
        runs.append(json.loads(result.stdout))
    return min(runs, key=lambda run: run["seconds"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="where to write the caffemodel (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        path = Path(folder) / "vgg16.caffemodel"
        start = time.perf_counter()
        count = generate(path)
        size = path.stat().st_size
        print(f"generated {path.name}: {count:,} float32 values, {size / 1e6:.0f} MB "
              f"in {time.perf_counter() - start:.1f} s")
        ours = measure(READER, path)
        full = measure(FULL_PARSE, path)
    if ours["shapes"] != full["shapes"]:
        sys.exit("the reader's layers and shapes differ from the full parse's")
    ours_mb, full_mb = ours["peak_kb"] / 1024, full["peak_kb"] / 1024
    speedup = full["seconds"] / ours["seconds"]
    print(f"caffegen reader, listing {len(ours['shapes'])} layers: {ours['seconds']:.4f} s, "
          f"{ours_mb:.0f} MB peak RSS (the whole Python process)")
    print(f"full NetParameter.ParseFromString: {full['seconds']:.3f} s, {full_mb:.0f} MB peak RSS")
    print(f"goals: <= 0.5 s {'met' if ours['seconds'] <= 0.5 else 'MISSED'}, "
          f"<= 100 MB {'met' if ours_mb <= 100 else 'MISSED'}, >= 20x {'met' if speedup >= 20 else 'MISSED'}")
    print(f"read: {ours['seconds']:.4f} s, {ours_mb:.0f} MB peak, {speedup:.0f}× faster than a full parse")


if __name__ == "__main__":
    main()
