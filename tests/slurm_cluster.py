"""A real single-node Slurm cluster on localhost for tests: munged, slurmctld and slurmd in one directory.

It runs as the current user (root or not): the daemons take their configuration, state, spool,
logs and munge socket from the directory and talk over free local ports, so they touch nothing
of a Slurm the machine may already run. Clients find it through ``SLURM_CONF`` in :attr:`env`.
"""

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

APT_PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
PROGRAMS = ("mungekey", "munged", "slurmctld", "slurmd", "sbatch", "sinfo", "squeue", "scancel")
DAEMONS = ("munged", "slurmctld", "slurmd")
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/local/sbin"])

CONFIG = """\
ClusterName=caffegentest
SlurmctldHost={host}(127.0.0.1)
SlurmUser={user}
SlurmdUser={user}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
AuthInfo=socket={root}/munge.socket
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def missing_programs():
    """The Slurm and munge programs this machine lacks."""
    return [name for name in PROGRAMS if program(name) is None]


def program(name):
    return shutil.which(name, path=SEARCH_PATH)


class SlurmCluster:
    """munged, slurmctld and slurmd started in the foreground as our own children, stopped by :meth:`stop`."""

    def __init__(self, root):
        self.root = Path(root)
        self.host = socket.gethostname().split(".")[0]
        self.env = dict(os.environ, SLURM_CONF=str(self.root / "slurm.conf"))
        self.processes = []

    def start(self, timeout=60):
        """Write the configuration and a munge key, start the daemons, wait until the node is idle."""
        for folder in ("state", "spool"):
            (self.root / folder).mkdir()
        (self.root / "slurm.conf").write_text(CONFIG.format(
            host=self.host, user=getpass.getuser(), root=self.root, ctld_port=_free_port(),
            slurmd_port=_free_port(), cpus=min(2, os.cpu_count())))
        self.client("mungekey", "--create", f"--keyfile={self.root / 'munge.key'}")
        self._daemon("munged", "--foreground", "--force", f"--socket={self.root / 'munge.socket'}",
                     f"--key-file={self.root / 'munge.key'}", f"--log-file={self.root / 'munged.log'}",
                     f"--pid-file={self.root / 'munged.pid'}", f"--seed-file={self.root / 'munged.seed'}")
        self._wait(lambda: (self.root / "munge.socket").exists(), timeout, "munged to open its socket")
        self._daemon("slurmctld", "-D")
        self._daemon("slurmd", "-D", "-N", self.host)
        self._wait(lambda: "idle" in self.client("sinfo", "-h", "-N", "-o", "%T", check=False).stdout, timeout,
                   "the node to be idle")

    def client(self, name, *args, check=True):
        """Run a Slurm or munge client program against this cluster."""
        done = subprocess.run([program(name), *map(str, args)], env=self.env, capture_output=True, text=True)
        if check and done.returncode != 0:
            raise RuntimeError(f"{name} {' '.join(map(str, args))} failed: {done.stderr}\n{self.logs()}")
        return done

    def wait_for_job(self, job_id, timeout):
        """Wait until no task of ``job_id`` is pending or running."""
        self._wait(lambda: not self.client("squeue", "-h", "-j", job_id, "-o", "%i", check=False).stdout.strip(),
                   timeout, f"job {job_id} to end")

    def logs(self, lines=15):
        """The last lines of every daemon's log, for failure messages."""
        parts = []
        for path in sorted([*self.root.glob("*.log"), *self.root.glob("*.out")]):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def stop(self):
        """Cancel what is left of our jobs, then stop the daemons we started, newest first."""
        if len(self.processes) == len(DAEMONS) and all(process.poll() is None for process in self.processes):
            self.client("scancel", "-u", getpass.getuser(), check=False)
        for process in reversed(self.processes):
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _daemon(self, name, *args):
        output = open(self.root / f"{name}.out", "w")
        self.processes.append(subprocess.Popen([program(name), *args], env=self.env, stdout=output,
                                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        output.close()

    def _wait(self, ready, timeout, what):
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [process.args[0] for process in self.processes if process.poll() is not None]
            if dead or time.monotonic() > deadline:
                reason = f"{', '.join(dead)} exited" if dead else f"{timeout} s passed"
                raise RuntimeError(f"Slurm test cluster: waiting for {what}, {reason}\n{self.logs()}")
            time.sleep(0.2)


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
