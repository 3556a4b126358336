"""Regenerate the real Caffe logs in this folder, which the log parser and diagnosis tests read.

    python tests/data/logs/make_logs.py [--caffe PATH]

Every scenario writes a tiny net (DummyData, or ImageData over a few 8x8 PGM images written
with numpy) into one scratch folder, runs the real ``caffe train`` there with
GLOG_logtostderr=1, and saves what Caffe printed, stdout and stderr merged in order, as
``<scenario>.log``. Paths inside the logs are relative to the scratch folder. Caffe is the
one the tests use (``caffegen.install.install_caffe``) unless ``--caffe`` names another.
Each scenario checks that Caffe ended as it expects, so a different Caffe fails loudly here
instead of producing misleading fixtures. Timestamps, thread ids and the iteration at
which the interrupted run stops vary from one regeneration to the next.
"""

import argparse
import os
import resource
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))  # caffegen from this checkout, to find Caffe as the tests do
sys.path.insert(0, str(HERE.parents[1]))  # the tests' helpers
from caffe_runs import started_address_space  # noqa: E402

DATA = """
layer { name: "data" type: "DummyData" top: "data" top: "label" include { phase: %(phase)s }
  dummy_data_param { data_filler { type: "gaussian" std: 1 } data_filler { %(labels)s }
                     shape { dim: 8 dim: 2 dim: 6 dim: 6 } shape { dim: 8 } } }"""

TRUNK = """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" %(conv_params)s
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "%(fc)s" type: "InnerProduct" bottom: "conv1" top: "fc" %(fc_params)s
  inner_product_param { num_output: %(classes)d weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "fc" bottom: "label" top: "accuracy"
  include { phase: TEST } }
"""

FROZEN = 'param { lr_mult: 0 decay_mult: 0 } param { lr_mult: 0 decay_mult: 0 }'
FAST = 'param { lr_mult: 10 decay_mult: 1 } param { lr_mult: 20 decay_mult: 0 }'
CONSTANT = 'type: "constant" value: %d'
RANDOM_LABELS = 'type: "uniform" min: 0 max: 2.99'
ABORTED = -signal.SIGABRT  # what subprocess reports for Caffe's abort on a fatal error

SOLVER = """net: "%(net)s"
base_lr: %(base_lr)s
lr_policy: "%(policy)s"
stepsize: 40
gamma: 0.1
momentum: 0.9
max_iter: %(max_iter)d
display: %(display)d
test_iter: 2
test_interval: %(test_interval)d
snapshot: %(snapshot)d
snapshot_prefix: "%(prefix)s"
solver_mode: CPU
random_seed: 7
"""

IMAGE_NET = """name: "images"
layer { name: "data" type: "ImageData" top: "data" top: "label"
  image_data_param { source: "%(source)s" batch_size: 8 is_color: false } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc"
  inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""

IMAGE_SOLVER = """net: "%(net)s"
base_lr: %(base_lr)s
lr_policy: "fixed"
momentum: 0.9
max_iter: 40
display: 1
solver_mode: CPU
random_seed: 7
snapshot_prefix: "images"
snapshot_after_train: false
"""


class Scratch:
    """The scratch folder the scenarios run in, and the Caffe they run."""

    def __init__(self, caffe, root):
        self.caffe = str(caffe)
        self.root = Path(root)
        self.env = dict(os.environ, GLOG_logtostderr="1")

    def write(self, name, text):
        (self.root / name).write_text(text)
        return name

    def popen(self, *args, address_space=None):
        limit = (lambda: resource.setrlimit(resource.RLIMIT_AS, (address_space,) * 2)) if address_space else None
        return subprocess.Popen([self.caffe, *args], cwd=self.root, env=self.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=limit)

    def run(self, *args, expect, address_space=None):
        """Run ``caffe args`` (in ``address_space`` bytes); return its log after checking it exited with ``expect``."""
        with self.popen(*args, address_space=address_space) as process:
            log = process.stdout.read()
        check(process.returncode == expect, f"caffe {' '.join(args)} exited with {process.returncode}", log)
        return log


def check(condition, what, log):
    if not condition:
        raise SystemExit(f"unexpected: {what}\n{log[-3000:]}")


def dummy_net(name, labels=CONSTANT % 1, classes=3, fc="fc", conv_params="", fc_params=""):
    """A tiny classifier on DummyData, with a TEST phase that reports accuracy and loss."""
    parts = dict(labels=labels, classes=classes, fc=fc, conv_params=conv_params, fc_params=fc_params)
    data = "".join(DATA % dict(parts, phase=phase) for phase in ("TRAIN", "TEST"))
    return f'name: "{name}"' + data + TRUNK % parts


def solver(net, base_lr=0.01, policy="step", max_iter=60, display=5, test_interval=20, snapshot=30,
           prefix="base"):
    return SOLVER % dict(net=net, base_lr=base_lr, policy=policy, max_iter=max_iter, display=display,
                         test_interval=test_interval, snapshot=snapshot, prefix=prefix)


def write_images(scratch, per_class, prefix):
    """Random 8x8 grey PGM images of two classes, listed sorted by class; return the list's name."""
    rng = np.random.default_rng(0)
    lines = []
    for label in range(2):
        for i in range(per_class):
            name = f"{prefix}{label}_{i}.pgm"
            pixels = rng.integers(0, 256, (8, 8), dtype=np.uint8)
            (scratch.root / name).write_bytes(b"P5\n8 8\n255\n" + pixels.tobytes())
            lines.append(f"{name} {label}")
    return scratch.write(f"{prefix}.txt", "\n".join(lines) + "\n")


def image_solver(scratch, source, base_lr=0.01):
    net = scratch.write(f"net_{Path(source).stem}.prototxt", IMAGE_NET % dict(source=source))
    return scratch.write(f"solver_{Path(source).stem}.prototxt", IMAGE_SOLVER % dict(net=net, base_lr=base_lr))


def train_ok(scratch):
    """A clean run with tests, two learning rates and snapshots; its weights seed the fine-tunes."""
    scratch.write("net.prototxt", dummy_net("tiny"))
    scratch.write("solver.prototxt", solver("net.prototxt"))
    log = scratch.run("train", "-solver", "solver.prototxt", expect=0)
    check((scratch.root / "base_iter_60.caffemodel").exists(), "no final snapshot", log)
    return log


def finetune(scratch):
    """conv1 frozen, the classifier renamed and resized to 5 classes, weights from train_ok."""
    scratch.write("ft.prototxt", dummy_net("tiny_ft", labels=CONSTANT % 4, classes=5, fc="fc_ft",
                                           conv_params=FROZEN, fc_params=FAST))
    scratch.write("ft_solver.prototxt", solver("ft.prototxt", max_iter=40, prefix="ft"))
    return scratch.run("train", "-solver", "ft_solver.prototxt", "-weights", "base_iter_60.caffemodel", expect=0)


def shape_mismatch(scratch):
    """The classifier resized to 5 classes but not renamed: Caffe cannot copy the old weights."""
    scratch.write("ft_same_name.prototxt", dummy_net("tiny_ft", labels=CONSTANT % 4, classes=5))
    scratch.write("ft_same_name_solver.prototxt", solver("ft_same_name.prototxt", prefix="ft"))
    return scratch.run("train", "-solver", "ft_same_name_solver.prototxt", "-weights", "base_iter_60.caffemodel",
                       expect=ABORTED)


def resume(scratch):
    """train_ok resumed from its snapshot at iteration 30."""
    return scratch.run("train", "-solver", "solver.prototxt", "-snapshot", "base_iter_30.solverstate", expect=0)


def outputs(scratch):
    """Two test nets, per-class accuracy (an output of several values) and a training accuracy."""
    text = dummy_net("tiny", labels=RANDOM_LABELS).replace(
        'top: "accuracy"\n  include { phase: TEST } }', 'top: "accuracy" top: "per_class" }')
    scratch.write("outputs.prototxt", text)
    scratch.write("outputs_solver.prototxt",
                  solver("outputs.prototxt", max_iter=20, test_interval=10, snapshot=0, prefix="outputs")
                  .replace("test_iter: 2\n", "test_iter: 2\ntest_iter: 1\n"))
    return scratch.run("train", "-solver", "outputs_solver.prototxt", expect=0)


def interrupted(scratch):
    """A long run sent SIGINT after its display at iteration 3000, with -sigint_effect stop."""
    scratch.write("long_solver.prototxt", solver("net.prototxt", policy="fixed", max_iter=100000000, display=1000,
                                                 test_interval=100000000, snapshot=0, prefix="long"))
    lines = []
    with scratch.popen("train", "-solver", "long_solver.prototxt", "-sigint_effect", "stop") as process:
        for line in process.stdout:
            lines.append(line)
            if "] Iteration 3000 (" in line:
                process.send_signal(signal.SIGINT)
    log = "".join(lines)
    check(process.returncode == 0, f"interrupted caffe exited with {process.returncode}", log)
    check("Optimization stopped early." in log and ".solverstate" in log, "no snapshot after SIGINT", log)
    return log


def diverge_nan(scratch):
    """Random labels and base_lr 1000: the loss turns NaN within a few iterations."""
    scratch.write("random_labels.prototxt", dummy_net("tiny", labels=RANDOM_LABELS))
    scratch.write("nan_solver.prototxt", solver("random_labels.prototxt", base_lr=1000, policy="fixed",
                                                max_iter=30, display=2, snapshot=0, prefix="nan"))
    log = scratch.run("train", "-solver", "nan_solver.prototxt", expect=0)
    check("loss = -nan" in log or "loss = nan" in log, "no NaN loss", log)
    return log


def stuck_87(scratch):
    """Unscaled 0-255 pixels from a list sorted by class and base_lr 10: the loss sticks at 87.3365."""
    log = scratch.run("train", "-solver", image_solver(scratch, write_images(scratch, 64, "sorted"), 10), expect=0)
    check(log.count("loss = 87.3365") >= 3, "the loss never stuck at 87.3365", log)
    return log


def labels_out_of_range(scratch):
    """Labels 5 for a 3-class classifier: the release build reads and writes past its blobs."""
    scratch.write("labels5.prototxt", dummy_net("tiny", labels=CONSTANT % 5))
    scratch.write("labels5_solver.prototxt", solver("labels5.prototxt", max_iter=200, display=20, test_interval=50,
                                                    snapshot=0, prefix="labels5"))
    return scratch.run("train", "-solver", "labels5_solver.prototxt", expect=ABORTED)


def labels_equal_num_output(scratch):
    """Every label equal to num_output, as with labels counted from 1: Caffe runs to the end without a word."""
    scratch.write("labels3.prototxt", dummy_net("tiny", labels=CONSTANT % 3))
    scratch.write("labels3_solver.prototxt", solver("labels3.prototxt", max_iter=200, display=20, test_interval=50,
                                                    snapshot=0, prefix="labels3"))
    return scratch.run("train", "-solver", "labels3_solver.prototxt", expect=0)


def gpu_on_cpu_only(scratch):
    return scratch.run("train", "-solver", "solver.prototxt", "-gpu", "0", expect=ABORTED)


def missing_weights(scratch):
    return scratch.run("train", "-solver", "ft_solver.prototxt", "-weights", "missing.caffemodel", expect=ABORTED)


def missing_snapshot(scratch):
    return scratch.run("train", "-solver", "solver.prototxt", "-snapshot", "missing.solverstate", expect=ABORTED)


def missing_solver(scratch):
    return scratch.run("train", "-solver", "missing_solver.prototxt", expect=ABORTED)


def missing_net(scratch):
    scratch.write("missing_net_solver.prototxt", solver("missing_net.prototxt"))
    return scratch.run("train", "-solver", "missing_net_solver.prototxt", expect=ABORTED)


def missing_image_list(scratch):
    return scratch.run("train", "-solver", image_solver(scratch, "missing.txt"), expect=ABORTED)


def missing_image(scratch):
    """One listed image does not exist; it is not the first, so the prefetch thread meets it."""
    listed = (scratch.root / write_images(scratch, 8, "few")).read_text().splitlines()
    source = scratch.write("few_missing.txt", "\n".join(listed[:3] + ["missing.pgm 1"] + listed[3:]) + "\n")
    return scratch.run("train", "-solver", image_solver(scratch, source), expect=ABORTED)


def bad_prototxt(scratch):
    """A misspelt field in the net: protobuf names it, then Caffe aborts."""
    text = dummy_net("tiny").replace("kernel_size", "kernel_sise")
    scratch.write("typo.prototxt", text)
    scratch.write("typo_solver.prototxt", solver("typo.prototxt"))
    return scratch.run("train", "-solver", "typo_solver.prototxt", expect=ABORTED)


def unknown_layer_type(scratch):
    scratch.write("unknown.prototxt", dummy_net("tiny").replace('"Convolution"', '"Convolutio"'))
    scratch.write("unknown_solver.prototxt", solver("unknown.prototxt"))
    return scratch.run("train", "-solver", "unknown_solver.prototxt", expect=ABORTED)


def python_layer(scratch):
    """A Python layer: the Debian Caffe's embedded Python finds no standard library in caffegen's prefix."""
    python = ('layer { name: "py" type: "Python" bottom: "conv1" top: "conv1" '
              'python_param { module: "my_layer" layer: "MyLayer" } }\n'
              'layer { name: "relu1"')
    scratch.write("python.prototxt", dummy_net("tiny").replace('layer { name: "relu1"', python))
    scratch.write("python_solver.prototxt", solver("python.prototxt"))
    return scratch.run("train", "-solver", "python_solver.prototxt", expect=1)


def allocation_failed(scratch):
    """A 1 GiB DummyData batch in a little more address space than Caffe needs to start: its allocation fails."""
    scratch.write("tiny_solver.prototxt", solver(scratch.write("tiny.prototxt", dummy_net("tiny")), max_iter=10000))
    limit = started_address_space(scratch.caffe, "train", "-solver", "tiny_solver.prototxt", cwd=scratch.root)
    huge = dummy_net("huge").replace("shape { dim: 8 dim: 2 dim: 6 dim: 6 } shape { dim: 8 }",
                                     "shape { dim: 4096 dim: 64 dim: 32 dim: 32 } shape { dim: 4096 }")
    scratch.write("huge_solver.prototxt", solver(scratch.write("huge.prototxt", huge)))
    log = scratch.run("train", "-solver", "huge_solver.prototxt", expect=ABORTED, address_space=limit)
    check("host allocation of size" in log, "no failed allocation", log)
    return log


def bad_alloc(scratch):
    """Weights with an unused 256 MiB layer, parsed in a little more address space than Caffe needs to start:
    protobuf's allocation fails, and C++ terminates Caffe."""
    from caffegen.io.caffemodel import write_caffemodel
    from caffegen.io.schema import BVLC
    write_caffemodel(scratch.root / "unused.caffemodel",
                     [(BVLC.LayerParameter(name="unused", type="InnerProduct"), [np.zeros((1 << 26) + 1, np.float32)])])
    scratch.write("tiny_solver.prototxt", solver(scratch.write("tiny.prototxt", dummy_net("tiny")), max_iter=10000))
    limit = started_address_space(scratch.caffe, "train", "-solver", "tiny_solver.prototxt", cwd=scratch.root)
    log = scratch.run("train", "-solver", "tiny_solver.prototxt", "-weights", "unused.caffemodel", expect=ABORTED,
                      address_space=limit)
    check("std::bad_alloc" in log, "no std::bad_alloc", log)
    return log


SCENARIOS = [train_ok, finetune, shape_mismatch, resume, outputs, interrupted, diverge_nan, stuck_87,
             labels_out_of_range, labels_equal_num_output, gpu_on_cpu_only, missing_weights, missing_snapshot,
             missing_solver, missing_net, missing_image_list, missing_image, bad_prototxt, unknown_layer_type,
             python_layer, allocation_failed, bad_alloc]


def default_caffe():
    from caffegen.run.install import install_caffe
    return install_caffe(log=lambda line: None)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--caffe", help="the caffe binary (default: the one caffegen installs)")
    parser.add_argument("--only", nargs="+", metavar="SCENARIO", help="regenerate these logs only")
    args = parser.parse_args()
    caffe = args.caffe or default_caffe()
    with tempfile.TemporaryDirectory(prefix="caffegen-logs-") as root:
        scratch = Scratch(caffe, root)
        for scenario in SCENARIOS:
            if args.only and scenario.__name__ not in args.only:
                continue
            log = scenario(scratch)
            (HERE / f"{scenario.__name__}.log").write_text(log)
            print(f"{scenario.__name__}.log: {len(log.splitlines())} lines")


if __name__ == "__main__":
    main()
