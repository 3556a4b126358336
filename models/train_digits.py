"""Train the bundled base model, models/digits/digits.caffemodel, with the real Caffe binary.

The base task is scikit-learn's handwritten digits 0–4 (upscaled to 28×28); `caffegen demo`
then fine-tunes this model to the digits 5–9. Run from the repository root, with caffegen installed (pip install .):

    python models/train_digits.py

It writes models/digits/digits.caffemodel and prints the base model's validation accuracy.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from caffegen.job.dataset import scan_class_folders
from caffegen.strategies.digits import write_digit_images
from caffegen.run.install import install_caffe

HERE = Path(__file__).resolve().parent / "digits"
EPOCHS = 15
SOLVER = """net: "train_val.prototxt"
test_iter: {test_iter}
test_interval: {epoch}
base_lr: 0.01
lr_policy: "step"
gamma: 0.1
stepsize: {stepsize}
momentum: 0.9
weight_decay: 0.0005
max_iter: {max_iter}
display: {epoch}
snapshot_prefix: "digits"
solver_mode: CPU
random_seed: 1
"""


def main():
    caffe = install_caffe()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_digit_images(work / "images", digits=range(5))
        dataset = scan_class_folders(work / "images", val_fraction=0.2, seed=1)
        (work / "train.txt").write_text(dataset.list_text("train"))
        (work / "val.txt").write_text(dataset.list_text("val"))
        shutil.copy(HERE / "train_val.prototxt", work)
        epoch = -(-len(dataset.train) // 32)
        max_iter = EPOCHS * epoch
        (work / "solver.prototxt").write_text(SOLVER.format(
            test_iter=-(-len(dataset.val) // 50), epoch=epoch, stepsize=max_iter * 2 // 3, max_iter=max_iter))
        result = subprocess.run([str(caffe), "train", "-solver", "solver.prototxt"], cwd=work,
                                env=dict(os.environ, GLOG_logtostderr="1"), capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(result.stderr[-3000:])
        accuracy = [line for line in result.stderr.splitlines() if "Test net output" in line and "accuracy" in line]
        shutil.copy(work / f"digits_iter_{max_iter}.caffemodel", HERE / "digits.caffemodel")
    print(f"wrote {HERE / 'digits.caffemodel'}; {accuracy[-1].split('] ')[-1]}")


if __name__ == "__main__":
    main()
