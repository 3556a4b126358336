"""The ``caffegen launch`` that another process runs for a strategy (a per-GPU worker of a sweep, a Slurm task), or
that a command tells the user to run next.

:func:`launch_command` is the one place that command line is built, so every such launch runs the
same caffegen and gets the Caffe binary and device its command was given.
"""

import sys
from pathlib import Path

# How a child runs caffegen: with the interpreter of the caffegen that started it or wrote its script.
CAFFEGEN = (sys.executable, "-m", "caffegen")
# How a user runs it, in a command line shown to copy.
USER_CAFFEGEN = ("caffegen",)


def launch_command(*options, run_dir=None, caffe=None, gpu=None, program=None):
    """argv of the ``caffegen launch`` a task or a worker runs (a user, with ``program`` USER_CAFFEGEN) with
    ``options``, passing on the Caffe binary and device it was given."""
    command = [*(program or CAFFEGEN), "launch", *([str(run_dir)] if run_dir else [])]
    command += (["--caffe", str(Path(caffe).resolve())] if caffe else []) + (["--gpu", str(gpu)] if gpu else [])
    return command + list(options)
