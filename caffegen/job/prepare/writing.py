"""Writing a run directory: built beside its place, checked, and renamed into it whole."""

import os
import shutil

from caffegen.io.files import built_beside
from caffegen.job.memorycheck import extraction_batch, extraction_check
from caffegen.job.rundir import SNAPSHOT_DIR, RunDir


def planned_cache(memory, device, build):
    """The check of a cached run's built directory: its cache plan, and its extraction's memory; it answers the
    notes and the plan."""
    def check(staging):
        plan = RunDir(staging).cache_plan
        notes = [plan.describe()]
        if memory.budget is not None:
            batch = extraction_batch(plan, device, memory.budget)
            notes += [batch.line()] + memory.note(extraction_check(plan, device, memory.budget, batch.size))
        return notes, plan
    return check


def write_run_dir(run_dir, files, copies, check=None, moves=None):
    """Build the directory beside ``run_dir`` (texts, copies of files, ``moves`` renamed in) and rename it into place.

    ``check``, if given, is called with the built directory before it takes its place, so that what it
    refuses is never written; its answer is returned.
    """
    with built_beside(run_dir) as staging:
        for name, text in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            with open(staging / name, "w", encoding="utf-8", newline="") as out:
                out.write(text)
            if name.endswith(".sh"):
                (staging / name).chmod(0o755)
            if name.endswith("solver.prototxt"):
                (staging / name).parent.joinpath(SNAPSHOT_DIR).mkdir(exist_ok=True)
        for source, name in copies.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, staging / name)
        for source, name in (moves or {}).items():
            os.rename(source, staging / name)
        return check(staging) if check else None
