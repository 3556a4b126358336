"""Benchmark: the throughput of the data layer alone, ImageData against raw and encoded LMDBs.

On a GPU, the single-threaded decoding of ``ImageData``, not the net, limits training. The bench
draws JPEGs at 256×256 (as bench/cache_scale.py draws them), builds the raw and the encoded (JPEG)
LMDB of them with caffegen's own builder (Caffe's ``convert_imageset``), and times a net that holds
only the data layer and a Silence layer with ``caffe time -phase TRAIN``, over three passes of the
images, so that the few batches prefetched while the net is set up weigh little.

Usage: python bench/data_layers.py [--dir FOLDER] [--images 2000]
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cache_scale import SIDE, write_images  # noqa: E402

from caffegen.io.lists import list_line  # noqa: E402
from caffegen.job.dataset import scan_class_folders  # noqa: E402
from caffegen.job.imagedb import plan_databases  # noqa: E402
from caffegen.run.install import install_caffe  # noqa: E402
from caffegen.run.lmdb import DatabaseBuilder  # noqa: E402
from caffegen.run.target import Target  # noqa: E402

BATCH, PASSES = 50, 3
NET = """name: "data_only"
layer {{ name: "data" type: "{type}" top: "data" top: "label" {params} }}
layer {{ name: "silence" type: "Silence" bottom: "data" bottom: "label" }}
"""


def image_data_net(list_file):
    return NET.format(type="ImageData", params=f'image_data_param {{ source: "{list_file}" batch_size: {BATCH} }}')


def lmdb_net(database):
    return NET.format(type="Data", params=f'data_param {{ source: "{database}" batch_size: {BATCH} backend: LMDB }}')


def throughput(caffe, folder, name, net_text, count):
    """Images per second of the data layer of ``net_text``, as ``caffe time`` measures its forward passes."""
    path = folder / f"{name}.prototxt"
    path.write_text(net_text)
    iterations = PASSES * count // BATCH
    done = subprocess.run([str(caffe), "time", "-model", str(path), "-phase", "TRAIN", "-iterations", str(iterations)],
                          capture_output=True, text=True, env=dict(os.environ, GLOG_logtostderr="1"))
    found = re.search(r"Average Forward pass: ([0-9.]+) ms", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"caffe time failed on {path}:\n{done.stderr[-2000:]}")
    return BATCH / float(found.group(1)) * 1000


def build(target, dataset, folder, encode_type):
    """The training LMDB of ``dataset``, built by convert_imageset into ``folder``; (path, seconds)."""
    folder.mkdir()
    started = time.monotonic()
    plan = plan_databases(dataset, None, False, encode_type, False, seed=1)
    DatabaseBuilder(target)(plan, folder)
    return folder / plan.train.name, time.monotonic() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--images", type=int, default=2000)
    args = parser.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="caffegen-bench-"))
    caffe = install_caffe(log=print)
    images = work / "images"
    write_images(images, args.images)
    dataset = scan_class_folders(images, val_fraction=0.05)
    dataset.train += dataset.val  # every image is timed; the val database is a few images
    count = len(dataset.train)
    (work / "train.txt").write_text("".join(list_line(path, label) for path, label in dataset.train))
    raw, raw_seconds = build(Target(caffe), dataset, work / "raw", None)
    encoded, encoded_seconds = build(Target(caffe), dataset, work / "encoded", "jpg")
    print(f"convert_imageset: raw LMDB in {raw_seconds:.1f} s ({raw.joinpath('data.mdb').stat().st_size >> 20} MiB), "
          f"encoded in {encoded_seconds:.1f} s ({encoded.joinpath('data.mdb').stat().st_size >> 20} MiB)")
    speeds = {"ImageData": throughput(caffe, work, "image_data", image_data_net(work / "train.txt"), count),
              "raw LMDB": throughput(caffe, work, "raw", lmdb_net(raw), count),
              "encoded LMDB": throughput(caffe, work, "encoded", lmdb_net(encoded), count)}
    base = speeds["ImageData"]
    for name, speed in speeds.items():
        print(f"{name}: {speed:.0f} img/s over {PASSES} passes of {count} images, batch {BATCH}")
    print(f"data layer at {SIDE}²: ImageData {base:.0f} img/s, raw LMDB {speeds['raw LMDB']:.0f} img/s "
          f"({speeds['raw LMDB'] / base:.1f}×), encoded LMDB {speeds['encoded LMDB']:.0f} img/s "
          f"({speeds['encoded LMDB'] / base:.1f}×) on {count} images")


if __name__ == "__main__":
    main()
