"""The ``caffegen launch`` that another process runs for a strategy: a per-GPU worker of a sweep, a Slurm task.

:func:`launch_command` is the one place that argv is built, so every such process runs the same
caffegen and gets the Caffe binary and device its command was given.
"""

import sys
from pathlib import Path

# How a child runs caffegen: with the interpreter of the caffegen that started it or wrote its script.
CAFFEGEN = (sys.executable, "-m", "caffegen")


def launch_command(*options, run_dir=None, caffe=None, gpu=None):
    """argv of the ``caffegen launch`` a task or a worker runs with ``options``, passing on the Caffe binary and
    device it was given."""
    command = [*CAFFEGEN, "launch", *([str(run_dir)] if run_dir else [])]
    command += (["--caffe", str(Path(caffe).resolve())] if caffe else []) + (["--gpu", str(gpu)] if gpu else [])
    return command + list(options)
