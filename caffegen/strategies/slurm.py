"""Slurm: checking what an sbatch script may hold, and submitting one after another job."""

import shlex
import shutil
import subprocess
from pathlib import Path

from caffegen.errors import CaffegenError


def check_slurm(folder, sbatch_options=()):
    """Refuse what an sbatch script cannot hold: a quote or newline in the path, a line that is no option."""
    folder = Path(folder).resolve()
    if any(char in str(folder) for char in '"\n'):
        raise CaffegenError("an sbatch script cannot name a path with a double quote or a newline; "
                            "choose another directory", folder)
    for option in sbatch_options:
        if not option.startswith("-") or "\n" in option:
            raise CaffegenError(f"--slurm-opt takes an sbatch option such as --partition=gpu, got '{option}'")


def check_sbatch(script):
    """The sbatch program, or a one-line error saying where to submit ``script`` instead."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise CaffegenError(f"sbatch not found: run this on a Slurm login node, or submit {script} there "
                            f"with: sbatch {shlex.quote(str(script))}")
    return sbatch


def submit(script, after=None, what="job array"):
    """Submit ``script`` with sbatch (no shell involved), after job ``after`` succeeded if given; return the job id."""
    sbatch = check_sbatch(script)
    # After a failed job before it, this one could never start: Slurm cancels it instead of keeping it pending.
    dependency = [f"--dependency=afterok:{after}", "--kill-on-invalid-dep=yes"] if after else []
    done = subprocess.run([sbatch, "--parsable", *dependency, str(script)], capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise CaffegenError(f"sbatch refused the {what}: {reason}", script)
    return done.stdout.strip().split(";")[0]
