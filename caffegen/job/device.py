"""Where Caffe computes: the CPU, or GPUs as Caffe's ``-gpu`` names them."""

import re
from dataclasses import dataclass

from caffegen.errors import CaffegenError

GPU_IDS = re.compile(r"\d+(,\d+)*")


@dataclass(frozen=True)
class Device:
    """``cpu``, one GPU ``0``, several ``0,1``, or ``all``: what ``--gpu`` takes and the manifest records."""

    name: str

    @classmethod
    def parse(cls, text):
        """The device ``text`` names; a user error for anything Caffe's -gpu would not take."""
        name = str(text).strip().lower().replace(" ", "")
        if name not in ("cpu", "all") and not GPU_IDS.fullmatch(name):
            raise CaffegenError(f"--gpu takes cpu, a GPU id such as 0, ids such as 0,1, or all; got '{text}'")
        return cls(name)

    @property
    def is_cpu(self):
        return self.name == "cpu"

    @property
    def gpu_flag(self):
        """The value of Caffe's ``-gpu``, or None on the CPU."""
        return None if self.is_cpu else self.name

    @property
    def workers(self):
        """How many solvers share each iteration: 1 on the CPU or with ``all`` (counted by Caffe), else the ids."""
        return 1 if self.name in ("cpu", "all") else len(self.name.split(","))

    def __str__(self):
        return self.name


CPU = Device("cpu")
