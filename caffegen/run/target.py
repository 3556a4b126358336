"""The Caffe a command runs and the device it asks for, resolved once at the command's edge."""

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

from caffegen.errors import CaffegenError, CaffeNotFound
from caffegen.job.device import CPU, Device
from caffegen.run.locate import caffe_is_cpu_only, find_caffe


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

    def planned_device(self, echo):
        """The device to prepare a job for: the one asked for, else a GPU when this Caffe can use one."""
        if self.device is not None:
            return self.device
        if self.caffe is None:
            echo("no Caffe found yet: preparing for CPU (pass --gpu 0 to train on a GPU)")
            return CPU
        if self.cpu_only:
            echo(f"{self.caffe} is a CPU-only build: training on the CPU")
            return CPU
        return Device("0")

    def launch_device(self, planned, echo):
        """The device a run trains on: the one asked for, else ``planned``; a CPU-only Caffe never gets -gpu."""
        wanted = self.device or planned
        if not wanted.is_cpu and self.cpu_only:
            if self.device is not None:
                raise CaffegenError(f"{self.caffe} is a CPU-only build and cannot use --gpu {self.device}; "
                                    "drop --gpu to train on the CPU")
            echo(f"{self.caffe} is a CPU-only build: training on the CPU instead of GPU {planned}")
            return CPU
        return wanted


def resolve_target(caffe=None, gpu=None, required=True):
    """The Target of a command from its --caffe and --gpu; without ``required``, a missing Caffe is allowed."""
    device = Device.parse(gpu) if gpu else None
    try:
        return Target(find_caffe(caffe), device)
    except CaffeNotFound as error:
        if required or caffe is not None:
            raise
        return Target(None, device, error)
