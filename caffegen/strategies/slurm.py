"""Slurm: the names of the scripts, the one writer of job arrays and jobs, their logs, their submission, and the
memory a run may take on a node.

Sweeps and cached runs write their scripts through :func:`write_sbatch_script`, whose tasks run the
command :func:`caffegen.strategies.childlaunch.launch_command` builds. Every path and option in a
script is quoted by :mod:`caffegen.io.quoting`; its comments name no input.

A node is not this machine, so its memory is never read here: :func:`node_budget` is the one rule
for sweeps (their runs' memory checks) and cached runs (their shards' mini-batch) alike.
"""

import re
import shutil
import subprocess
from pathlib import Path

from caffegen.errors import CaffegenError
from caffegen.io.files import write_atomic
from caffegen.io.quoting import sbatch_value, sh_command, sh_word
from caffegen.io.templates import render_template
from caffegen.net.memory import MemoryBudget

UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
SWEEP_SCRIPT = "slurm.sh"
FEATURES_SCRIPT = "slurm_features.sh"
HEAD_SCRIPT = "slurm_head.sh"
# sbatch's --mem: the memory of each node, in megabytes unless a K, M, G or T follows; 0 asks for all of it.
MEM_OPTION = re.compile(r"--mem[=\s]\s*(\d+)([KMGT]?)B?", re.IGNORECASE)
MEM_UNITS = {"K": 1 << 10, "": 1 << 20, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def node_budget(sbatch_options, device):
    """What a run may take on a Slurm node: on the CPU, the ``--mem`` its sbatch options ask for (the last one);
    otherwise unknown (a GPU's memory, --mem-per-cpu, no --mem), so nothing is refused and an extraction runs its
    default mini-batch."""
    if not device.is_cpu:
        return MemoryBudget(None, "the free memory of a Slurm node's GPU is not known here")
    asked = [option.strip() for option in sbatch_options if MEM_OPTION.fullmatch(option.strip())]
    size = MEM_OPTION.fullmatch(asked[-1]) if asked else None
    if size is None or int(size[1]) == 0:
        return MemoryBudget(None, "a Slurm node's memory is not known here: ask for it with --slurm-opt --mem=SIZE")
    return MemoryBudget(int(size[1]) * MEM_UNITS[size[2].upper()], f"the node's memory asked for ({asked[-1]})")


def check_slurm(folder, sbatch_options=()):
    """Refuse what an sbatch script cannot hold, before anything is written: the folder's path, the options."""
    sbatch_value(Path(folder).resolve(), "the folder")
    for option in sbatch_options:
        if not option.startswith("-"):
            raise CaffegenError(f"--slurm-opt takes an sbatch option such as --partition=gpu, got {option!r}")
        sbatch_value(option, "the option")


def write_sbatch_script(folder, name, role, argv, purpose, sbatch_options=(), tasks=None, task_argument="",
                        runs=(), notes=(), after=None):
    """Write the Slurm script ``folder/name`` that execs ``argv``, then ``task_argument`` (shell text of ours that
    picks the task's part); a job array of ``tasks`` tasks when given, ``runs`` its bash array RUNS; ``after``, the
    name of the script whose job it waits for."""
    folder = Path(folder).resolve()
    script = folder / name
    log = log_name(name, "%A", "%a") if tasks else log_name(name, "%j")
    dependency = f"--dependency=afterok:JOB (JOB: the id of {after}'s job) " if after else ""
    text = render_template(
        "slurm.sh.j2", job_name=UNSAFE_NAME.sub("-", f"caffegen-{folder.name}-{role}"), tasks=tasks,
        output=sbatch_value(str(folder).replace("%", "%%") + f"/{log}", "the log's path"),
        sbatch_options=[sbatch_value(option, "the option") for option in sbatch_options], purpose=purpose,
        script_name=name, dependency=dependency, notes=notes, runs=[sh_word(run) for run in runs],
        command=" ".join(filter(None, [sh_command(*argv), task_argument])))
    write_atomic(script, text)
    script.chmod(0o755)
    return script


def log_name(script_name, job, task=None):
    """The name of the log that job ``job`` of the script ``script_name`` writes beside it (task ``task``'s, of a job
    array): ``slurm-features-JOB_TASK.out`` for ``slurm_features.sh``."""
    return f"{Path(script_name).stem.replace('_', '-')}-{job}{f'_{task}' if task else ''}.out"


def sbatch_line(script, after_job=False):
    """The command line that submits ``script`` by hand, after the job JOB (an id to fill in) when ``after_job``."""
    return sh_command("sbatch", *(["--dependency=afterok:JOB"] if after_job else []), script)


def check_sbatch(script):
    """The sbatch program, or a one-line error saying where to submit ``script`` instead."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise CaffegenError(f"sbatch not found: run this on a Slurm login node, or submit {script} there "
                            f"with: {sbatch_line(script)}")
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
