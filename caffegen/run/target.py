"""The Caffe a command runs and the device it asks for, resolved once at the command's edge."""

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from caffegen.errors import CaffegenError, CaffeNotFound
from caffegen.job.device import CPU, Device
from caffegen.net.memory import MemoryBudget
from caffegen.run.locate import caffe_is_cpu_only, find_caffe

MEMINFO = Path("/proc/meminfo")
GPU_MEMORY_QUERY = ["--query-gpu=index,memory.free", "--format=csv,noheader,nounits"]


@dataclass(frozen=True)
class Target:
    """A Caffe binary (None when none is found yet), and the device asked for (None: as prepared)."""

    caffe: Path = None
    device: Device = None
    missing: CaffeNotFound = field(default=None, compare=False)  # why no Caffe was found

    @functools.cached_property
    def cpu_only(self):
        """Whether the Caffe is a CPU_ONLY build, asked of it once; None without a Caffe."""
        return None if self.caffe is None else caffe_is_cpu_only(self.caffe)

    def required(self):
        """This target, refusing to go on without a Caffe to run."""
        if self.caffe is None:
            raise self.missing
        return self

    def tool(self, name):
        """The Caffe tool ``name`` (extract_features, convert_imageset, …) built beside this Caffe."""
        caffe = self.required().caffe
        for candidate in (caffe.with_name(name), caffe.with_name(f"{name}.bin")):
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
        raise CaffegenError(f"Caffe's {name} tool is not beside {caffe}; install a complete Caffe with "
                            "`caffegen install-caffe`, or pass --caffe of a build that has its tools")

    def planned_device(self, reporter):
        """The device to prepare a job for: the one asked for (a GPU only of a Caffe that can use one), else a GPU
        when this Caffe can use one."""
        if self.device is not None:
            self._refuse_gpu_of_cpu_only("prepare for the CPU, or pass --caffe of a build with CUDA")
            if not self.device.is_cpu and self.caffe is None:
                reporter.line(f"no Caffe found yet: preparing for GPU {self.device} as asked; unverified whether "
                              "the Caffe that trains it can use a GPU")
            return self.device
        if self.caffe is None:
            reporter.line("no Caffe found yet: preparing for CPU (pass --gpu 0 to train on a GPU)")
            return CPU
        if self.cpu_only:
            reporter.line(f"{self.caffe} is a CPU-only build: training on the CPU")
            return CPU
        return Device("0")

    def _refuse_gpu_of_cpu_only(self, instead):
        """Refuse a GPU asked for (--gpu) of a CPU-only Caffe; drop --gpu to do ``instead``."""
        if self.device is not None and not self.device.is_cpu and self.cpu_only:
            raise CaffegenError(f"{self.caffe} is a CPU-only build and cannot use --gpu {self.device}; drop --gpu "
                                f"to {instead}")

    def launch_device(self, planned, reporter):
        """The device a run trains on: the one asked for, else ``planned``; a CPU-only Caffe never gets -gpu."""
        wanted = self.device or planned
        if not wanted.is_cpu and self.cpu_only:
            self._refuse_gpu_of_cpu_only("train on the CPU")
            reporter.line(f"{self.caffe} is a CPU-only build: training on the CPU instead of GPU {planned}")
            return CPU
        return wanted


def memory_budget(device):
    """What a run on ``device`` may take: the RAM available for the CPU, the free memory of its GPUs (the least)."""
    return available_ram() if device.is_cpu else free_gpu_memory(device)


def available_ram():
    """The RAM available to a new process (MemAvailable of /proc/meminfo) as a budget; bytes None when unknown."""
    try:
        lines = MEMINFO.read_text(encoding="ascii").splitlines()
    except OSError as error:
        return MemoryBudget(None, f"cannot read {MEMINFO} ({error.strerror})")
    for line in lines:
        name, _, value = line.partition(":")
        if name == "MemAvailable" and value.split():
            return MemoryBudget(int(value.split()[0]) * 1024, "RAM available (MemAvailable)")
    return MemoryBudget(None, f"{MEMINFO} gives no MemAvailable")


def free_gpu_memory(device):
    """The free memory of the GPUs of ``device`` (the least of them), as nvidia-smi reports it."""
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is None:
        return MemoryBudget(None, "nvidia-smi is not on PATH, so the GPU's memory is unknown")
    try:
        done = subprocess.run([nvidia_smi, *GPU_MEMORY_QUERY], check=False, capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        return MemoryBudget(None, f"nvidia-smi failed ({error})")
    if done.returncode != 0:
        reason = (done.stdout + done.stderr).strip().splitlines() or [f"exit code {done.returncode}"]
        return MemoryBudget(None, f"nvidia-smi failed: {reason[-1]}")
    free = {}
    for line in done.stdout.splitlines():
        fields = [part.strip() for part in line.split(",")]
        if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
            free[fields[0]] = int(fields[1]) << 20  # MiB
    wanted = list(free) if device.name == "all" else device.name.split(",")
    missing = [gpu for gpu in wanted if gpu not in free]
    if missing or not wanted:
        return MemoryBudget(None, f"nvidia-smi lists no GPU {', '.join(missing) or 'at all'}")
    gpu = min(wanted, key=free.get)
    return MemoryBudget(free[gpu], f"free memory of GPU {gpu} (nvidia-smi)")


def resolve_target(caffe=None, gpu=None, required=True):
    """The Target of a command from its --caffe and --gpu; without ``required``, a missing Caffe is allowed."""
    device = Device.parse(gpu) if gpu else None
    try:
        return Target(find_caffe(caffe), device)
    except CaffeNotFound as error:
        if required or caffe is not None:
            raise
        return Target(None, device, error)
