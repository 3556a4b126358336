"""What ``prepare`` is asked beside the job's options: where the run goes, from what, and how strictly."""

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Request:
    """The run directory to write, the checked weights, the Caffe named in scripts and what the command passes down."""

    run_dir: Path
    weights: Path
    caffe: str = "caffe"
    force: bool = False
    warn: object = None  # told each note as it arises; None: the notes are returned
    stages: tuple = ()  # Stage: one run per stage
    budget: object = None  # a MemoryBudget, or None
    databases: object = None  # with --lmdb: the DatabaseBuilder
    reuse_from: tuple = ()  # run directories whose LMDBs may be reused
